//! rustls configuration: the gateway's server side (certificate, ALPN, optional client
//! certificates) and the client side used towards upstreams and the identity provider
//! (system roots or a configured CA file). Nothing here ever disables verification.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A pooled HTTP/1.1 + h2 client for http:// and https:// URLs.
pub type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector>, http_body_util::Empty<bytes::Bytes>>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order; none at all is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .and_then(|certs| match certs.is_empty() {
            true => Err(pem::Error::NoItemsFound),
            false => Ok(certs),
        })
        .map_err(|e| pem_error(path, "certificate", e))
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "private key", e))
}

/// Says what is wrong with a PEM file without quoting it: the file may hold a key.
fn pem_error(path: &Path, what: &str, e: pem::Error) -> String {
    let why = match e {
        pem::Error::NoItemsFound => format!("no PEM {what} found"),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        e => e.to_string(),
    };
    format!("{}: {why}", path.display())
}

/// Server-side TLS: the gateway certificate, ALPN `h2` then `http/1.1`, and — when a client
/// CA is configured — client certificates requested and verified (optional for callers that
/// authenticate with tokens; a presented certificate that does not verify fails the handshake).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, String> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Client-side TLS: the system roots, or only the given CA file when one is configured.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A broken system certificate is skipped, not fatal: the others still verify.
                let _ = roots.add(c);
            }
        }
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| e.to_string())
}

/// An HTTPS-capable connector (plain http:// also allowed) with a connect timeout.
pub fn https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    h2: bool,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(ca_file)?)
        .https_or_http();
    let connector = if h2 {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Ok(connector)
}

/// A small client for fetching documents (JWKS).
pub fn https_client(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsClient, String> {
    let connector = https_connector(ca_file, connect_timeout, true)?;
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// How a client certificate is named in the trail: its SHA-256 fingerprint, which the
/// security team can match against the issuing CA's records without parsing X.509 here.
pub fn certificate_label(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn dev_certificates_and_keys_load_and_make_a_server_config() {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::dev::generate_certs(&[], "client").unwrap();
        let chain = format!("{}{}", dev.server_cert, dev.ca_cert);
        let cert = write(dir.path(), "server.crt", &chain);
        let key = write(dir.path(), "server.key", &dev.server_key);
        let ca = write(dir.path(), "ca.crt", &dev.ca_cert);
        assert_eq!(load_certs(&cert).unwrap().len(), 2);
        assert!(matches!(load_key(&key).unwrap(), PrivateKeyDer::Pkcs8(_)));
        let config = server_config(&cert, &key, Some(&ca)).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        assert!(client_config(Some(&ca)).is_ok());
    }

    #[test]
    fn pem_files_without_the_item_or_broken_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::dev::generate_certs(&[], "client").unwrap();
        let key_only = write(dir.path(), "key.pem", &dev.server_key);
        let cert_only = write(dir.path(), "cert.pem", &dev.server_cert);
        let err = load_certs(&key_only).unwrap_err();
        assert!(err.ends_with("key.pem: no PEM certificate found"), "{err}");
        let err = load_key(&cert_only).unwrap_err();
        assert!(err.ends_with("cert.pem: no PEM private key found"), "{err}");
        let err = load_key(&dir.path().join("absent.pem")).unwrap_err();
        assert!(err.contains("absent.pem: "), "{err}");

        // A key whose END line is missing, or whose body is not base64: the reason, never
        // the key material.
        let body: String = dev.server_key.lines().nth(1).unwrap().to_owned();
        let truncated = dev.server_key.replace("-----END PRIVATE KEY-----", "");
        let err = load_key(&write(dir.path(), "cut.pem", &truncated)).unwrap_err();
        assert!(
            err.ends_with("cut.pem: a PEM section has no END line"),
            "{err}"
        );
        let garbled = dev
            .server_key
            .replace(&body, &format!("{}!*", &body[..body.len() - 2]));
        let err = load_key(&write(dir.path(), "bad.pem", &garbled)).unwrap_err();
        assert!(
            err.ends_with("bad.pem: a PEM section is not valid base64"),
            "{err}"
        );
        assert!(!err.contains(&body[..16]));
    }
}
