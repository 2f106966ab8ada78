//! Development material: a throw-away CA with server and client certificates, and a JWT
//! signing key with its JWKS and tokens. Used by `gatehouse certs dev`, `gatehouse demo`, the
//! tests and the benchmarks; `serve` never generates anything.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;

/// PEM text of a generated certificate authority and the certificates it signed.
pub struct DevCerts {
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
}

/// Generates a CA, a server certificate for `localhost`, `127.0.0.1`, `::1` and `extra_hosts`,
/// and a client certificate (`CN=client_cn`).
pub fn generate_certs(extra_hosts: &[String], client_cn: &str) -> Result<DevCerts, String> {
    let err = |e: rcgen::Error| e.to_string();

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Gatehouse development CA");
    dn.push(DnType::OrganizationName, "Gatehouse (development only)");
    ca.distinguished_name = dn;
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for h in extra_hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let server_key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(names).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "gatehouse");
    server.distinguished_name = dn;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(err)?;

    let client_key = KeyPair::generate().map_err(err)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, client_cn);
    client.distinguished_name = dn;
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client);
    let client_cert = client
        .signed_by(&client_key, &ca_cert, &ca_key)
        .map_err(err)?;

    Ok(DevCerts {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

impl DevCerts {
    /// Writes `ca.crt`, `ca.key`, `gateway.crt`, `gateway.key`, `client.crt`, `client.key` and
    /// `clients-ca.crt` (the same CA, under the name the example config uses for mTLS).
    pub fn write(&self, dir: &Path) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = [
            ("ca.crt", &self.ca_cert, false),
            ("ca.key", &self.ca_key, true),
            ("gateway.crt", &self.server_cert, false),
            ("gateway.key", &self.server_key, true),
            ("client.crt", &self.client_cert, false),
            ("client.key", &self.client_key, true),
            ("clients-ca.crt", &self.ca_cert, false),
        ];
        let mut written = Vec::new();
        for (name, content, secret) in files {
            let path = dir.join(name);
            write_file(&path, content.as_bytes(), secret)?;
            written.push(path.display().to_string());
        }
        Ok(written)
    }
}

/// Writes a file; private keys get mode 0600.
pub fn write_file(path: &Path, content: &[u8], secret: bool) -> Result<(), String> {
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

/// An ES256 key that signs development tokens, and its public JWKS.
pub struct TokenSigner {
    kid: String,
    key: jsonwebtoken::EncodingKey,
    key_pem: String,
    jwks: String,
}

/// Claims for a development token.
#[derive(Debug, Clone)]
pub struct TokenSpec<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub subject: &'a str,
    pub principal_type: &'a str,
    pub groups: &'a [&'a str],
    /// Seconds from now; negative for an already expired token.
    pub ttl_secs: i64,
}

impl TokenSigner {
    pub fn generate(kid: &str) -> Result<TokenSigner, String> {
        let pair = KeyPair::generate().map_err(|e| e.to_string())?;
        TokenSigner::from_pem(kid, &pair.serialize_pem())
    }

    pub fn from_pem(kid: &str, pem: &str) -> Result<TokenSigner, String> {
        let pair = KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        let raw = pair.public_key_raw();
        // An uncompressed P-256 point: 0x04 || x (32) || y (32).
        if raw.len() != 65 || raw[0] != 4 {
            return Err("the signing key is not an uncompressed P-256 key".to_owned());
        }
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| format!("signing key: {e}"))?;
        Ok(TokenSigner {
            kid: kid.to_owned(),
            key,
            key_pem: pem.to_owned(),
            jwks: jwks.to_string(),
        })
    }

    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn token(&self, spec: &TokenSpec<'_>) -> String {
        let now = crate::identity::unix_now() as i64;
        let claims = json!({
            "iss": spec.issuer, "aud": spec.audience, "sub": spec.subject,
            "iat": now, "nbf": now - 5, "exp": now + spec.ttl_secs,
            "principal_type": spec.principal_type, "groups": spec.groups,
        });
        self.sign(&claims)
    }

    /// Any claims, signed ES256 under this key's id.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        // Encoding with a key we just generated cannot fail short of a library bug.
        jsonwebtoken::encode(&header, claims, &self.key).unwrap_or_default()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a new Ed25519 key pair: PKCS#8 private key to `out` (0600), SubjectPublicKeyInfo
/// public key to `out.pub`. Returns the public key's path.
pub fn write_ed25519_keypair(out: &Path) -> Result<std::path::PathBuf, String> {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate an Ed25519 key".to_owned())?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| "cannot read the generated key".to_owned())?;
    // SPKI for Ed25519: SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING key }.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    write_file(out, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(), true)?;
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    write_file(&pub_path, pem("PUBLIC KEY", &spki).as_bytes(), false)?;
    Ok(pub_path)
}
