//! The fleet's certificate authority: it signs the controller's server
//! certificate and every agent's short-lived client certificate.
//!
//! Invariant: the CA key never leaves the controller's data dir; agents send
//! CSRs for keys they made themselves, so no private key crosses the wire.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The agent's CSR could not be parsed or its signature is wrong.
    #[error("the certificate signing request is not valid ({0}); the agent must send a PKCS#10 CSR in DER")]
    BadCsr(rcgen::Error),
    /// A SAN given to init is neither an IP address nor a DNS name.
    #[error("'{0}' is neither an IP address nor a DNS name")]
    BadSan(String),
    /// The CA files could not be loaded.
    #[error("{0}")]
    Load(String),
}

/// A freshly made CA: PEM texts to write to the data dir.
pub struct NewCa {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Makes a new CA, valid for ten years.
pub fn generate_ca(name: &str) -> Result<NewCa, CaError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(name).self_signed(&key)?;
    Ok(NewCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a CA rotation writes: the new CA, the new CA's certificate signed
/// by the old one (so a client that trusts only the old CA accepts a chain
/// through it), and the controller's server certificate from the new CA.
pub struct Successor {
    /// The new CA.
    pub ca: NewCa,
    /// The new CA's key certified by the old CA, PEM.
    pub cross_pem: String,
    /// The server certificate (leaf only), PEM.
    pub server_pem: String,
    /// Its key, PEM.
    pub server_key_pem: String,
}

/// The parameters of a CA named `name`.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("fleet CA {name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params.serial_number = Some(serial());
    params
}

/// The DNS names and addresses of a server certificate (PEM), to make its
/// successor for the same names.
pub fn sans_of(server_pem: &str) -> Result<Vec<String>, CaError> {
    let der = fleet_proto::transport::certs_from_pem("server.pem", server_pem)
        .map_err(|e| CaError::Load(format!("server certificate: {e}")))?;
    sans_of_der(&der[0])
}

/// [`sans_of`] a certificate in DER.
pub fn sans_of_der(der: &[u8]) -> Result<Vec<String>, CaError> {
    use x509_parser::extensions::GeneralName;
    let bad = |e: String| CaError::Load(format!("server certificate: {e}"));
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let Some(ext) = cert.subject_alternative_name().map_err(|e| bad(e.to_string()))? else {
        return Ok(Vec::new());
    };
    Ok(ext
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The loaded CA, able to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (sent to agents at enrollment).
    pub cert_pem: String,
    /// SHA-256 of the CA key: the root of the controller's own MAC keys, so
    /// they are the same after a restart and need no file of their own.
    secret: [u8; 32],
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A signed certificate and when it expires.
pub struct Signed {
    /// The certificate, PEM.
    pub pem: String,
    /// Its DER, for the fingerprint.
    pub der: Vec<u8>,
    /// Not valid before (ms).
    pub not_before_ms: i64,
    /// Not valid after (ms).
    pub not_after_ms: i64,
}

impl Ca {
    /// Loads the CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Load(format!("CA key: {e}")))?;
        let mut secret = [0u8; 32];
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"fleet controller secret v1\0");
        ctx.update(&key.serialize_der());
        secret.copy_from_slice(ctx.finish().as_ref());
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::Load(format!("CA cert: {e}")))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
            secret,
        })
    }

    /// The root of the controller's MAC keys in data dirs made before
    /// `mac.key` existed (SHA-256 of the CA key): `secrets` writes it to
    /// `mac.key` once, so what was signed with it stays valid after the CA
    /// is rotated.
    pub fn legacy_mac_root(&self) -> [u8; 32] {
        self.secret
    }

    /// Signs the controller's server certificate for `sans` with a key made here.
    /// Returns (certificate PEM, key PEM).
    pub fn server_certificate(&self, sans: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("fleet-controller");
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(825);
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Makes the CA that replaces this one (named `name`), its cross
    /// certificate signed by this one, and a server certificate from it for
    /// `sans`.
    pub fn successor(&self, name: &str, sans: &[String]) -> Result<Successor, CaError> {
        let key = KeyPair::generate()?;
        let params = ca_params(name);
        let cert = params.self_signed(&key)?;
        let mut cross_params = ca_params(name);
        cross_params.distinguished_name = params.distinguished_name.clone();
        let cross = cross_params.signed_by(&key, &self.issuer)?;
        let next = Ca::load(&cert.pem(), &key.serialize_pem())?;
        let (server_pem, server_key_pem) = next.server_certificate(sans)?;
        Ok(Successor {
            ca: NewCa {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            cross_pem: cross.pem(),
            server_pem,
            server_key_pem,
        })
    }

    /// Signs an agent's CSR as a client certificate for `host_id`, valid for `ttl`.
    ///
    /// Only the CSR's public key is used: the subject, SANs and usages are the
    /// controller's choice, so an agent cannot ask for more than a client cert
    /// naming its own host id.
    pub fn sign_client(&self, csr_der: &[u8], host_id: &str, ttl: Duration) -> Result<Signed, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der.to_vec()))
            .map_err(CaError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(host_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        // Five minutes of slack for hosts whose clock is a little behind.
        let not_before = now - Duration::from_secs(300);
        let not_after = now + ttl;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial());
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Signed {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            not_before_ms: ms(not_before),
            not_after_ms: ms(not_after),
        })
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn san(s: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = s.to_string().try_into().map_err(|_| CaError::BadSan(s.to_string()))?;
    Ok(SanType::DnsName(name))
}

fn serial() -> SerialNumber {
    let mut bytes = crate::random_bytes::<16>();
    // A positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_csr_for_the_given_host_only() {
        let new = generate_ca("test").expect("ca");
        let ca = Ca::load(&new.cert_pem, &new.key_pem).expect("load");
        let agent_key = KeyPair::generate().expect("key");
        let mut req = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        req.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = req.serialize_request(&agent_key).expect("csr");
        let signed = ca
            .sign_client(csr.der(), "h-1234", Duration::from_secs(3600))
            .expect("signed");
        let text = String::from_utf8_lossy(&signed.der);
        assert!(text.contains("h-1234"));
        assert!(!text.contains("evil.example"), "SANs from the CSR must not be copied");
        let life = signed.not_after_ms - signed.not_before_ms;
        assert_eq!(life, 3_600_000 + 300_000);
    }

    #[test]
    fn garbage_csr_is_refused() {
        let new = generate_ca("test").expect("ca");
        let ca = Ca::load(&new.cert_pem, &new.key_pem).expect("load");
        let err = ca
            .sign_client(b"not a csr", "h", Duration::from_secs(60))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("signing request"), "{err}");
    }
}
