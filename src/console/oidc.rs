//! Login through the bank's OpenID Provider: authorization code with PKCE (S256), `state`
//! and `nonce`. The pure parts (the provider's metadata, the authorization URL, the ID
//! token's verification) are functions of their inputs; talking to the provider (discovery,
//! keys, the token endpoint) is `Provider`, at the edge.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::web;
use crate::identity::KeySet;

/// The scopes asked for: the ID token must carry who the user is and their groups.
pub const SCOPES: &str = "openid email profile groups";
/// Answers from the provider larger than this are refused.
const MAX_DOCUMENT: usize = 256 * 1024;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The provider's keys are fetched again for an unknown key id at most this often.
const KEY_REFETCH: Duration = Duration::from_secs(30);
/// Signature algorithms an ID token may use: the data path's (asymmetric only).
const ID_TOKEN_ALGS: &[Algorithm] = crate::identity::ACCEPTED;

/// What the console needs from the provider's discovery document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

impl Metadata {
    /// Parses `/.well-known/openid-configuration`. The document must name exactly the
    /// configured issuer (OpenID Connect Discovery §4.3: anything else is an impostor).
    pub fn from_json(bytes: &[u8], expected_issuer: &str) -> Result<Metadata, String> {
        let meta: Metadata = serde_json::from_slice(bytes)
            .map_err(|e| format!("the provider's discovery document cannot be read: {e}"))?;
        if meta.issuer.trim_end_matches('/') != expected_issuer {
            return Err(format!(
                "the provider's discovery document names issuer {:?}, not the configured {expected_issuer:?}",
                meta.issuer
            ));
        }
        Ok(meta)
    }
}

/// The secrets of one login attempt, kept server-side until the provider sends the browser
/// back: `state` finds them, `nonce` binds the ID token to them, the verifier proves to the
/// token endpoint that whoever redeems the code started the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSecrets {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl LoginSecrets {
    pub fn generate() -> LoginSecrets {
        LoginSecrets {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
        }
    }
}

/// 32 random bytes, base64url without padding (43 characters: also a valid PKCE verifier).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random number generator is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7636 S256: base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Where the browser is sent to log in.
pub fn authorization_url(
    meta: &Metadata,
    client_id: &str,
    redirect_url: &str,
    secrets: &LoginSecrets,
) -> String {
    let query = web::form_encode(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_url),
        ("scope", SCOPES),
        ("state", &secrets.state),
        ("nonce", &secrets.nonce),
        ("code_challenge", &pkce_challenge(&secrets.verifier)),
        ("code_challenge_method", "S256"),
    ]);
    let sep = if meta.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{query}", meta.authorization_endpoint)
}

/// What an ID token must say to be accepted, and which claim names the person.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub principal_claim: &'a str,
}

/// Who logged in, from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

/// Verifies an ID token (OpenID Connect Core §3.1.3.7): signature by one of the provider's
/// keys with an asymmetric algorithm, issuer, audience (and `azp` when several audiences),
/// expiry, and the nonce of this login.
pub fn verify_id_token(
    token: &str,
    keys: &KeySet,
    expect: &Expected<'_>,
    nonce: &str,
) -> Result<Identity, String> {
    let Expected {
        issuer,
        client_id,
        principal_claim,
    } = *expect;
    let header = crate::identity::decode_header(token).map_err(|e| match e {
        crate::identity::IdentityError::CriticalExtension => {
            format!("the ID token is refused: {e}")
        }
        _ => "the ID token cannot be decoded".to_owned(),
    })?;
    if !ID_TOKEN_ALGS.contains(&header.alg) {
        return Err(format!(
            "the ID token is signed with {:?}, which is not accepted",
            header.alg
        ));
    }
    let key = keys
        .key_for(header.kid.as_deref(), header.alg)
        .map_err(|e| format!("the ID token's signing key: {e}"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer, &format!("{issuer}/")]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 60;
    let data =
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation)
            .map_err(|e| format!("the ID token does not verify: {e}"))?;
    let claims = data.claims;
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    if text("nonce").as_deref() != Some(nonce) {
        return Err("the ID token's nonce is not this login's".to_owned());
    }
    let several_audiences =
        matches!(claims.get("aud"), Some(serde_json::Value::Array(a)) if a.len() > 1);
    let azp = text("azp");
    if (several_audiences || azp.is_some()) && azp.as_deref() != Some(client_id) {
        return Err("the ID token was issued to another party (azp)".to_owned());
    }
    // Who the person is on the platform: the claim that names them as the data path does,
    // so the exception rules (no self-approval, one approval per person) compare like with like.
    let subject = text(principal_claim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("the ID token has no {principal_claim:?} claim to name you by"))?;
    let groups = crate::identity::groups_of(claims.get("groups"));
    Ok(Identity {
        subject,
        name: text("name").or_else(|| text("preferred_username")),
        email: text("email"),
        groups,
    })
}

/// The provider as the console talks to it: discovery and keys fetched when first needed
/// (the gateway starts even while the provider is down; login then says so), the token
/// endpoint called with the client's secret.
pub struct Provider {
    issuer: String,
    client_id: String,
    principal_claim: String,
    client_secret: Secret,
    redirect_url: String,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    metadata: tokio::sync::OnceCell<Metadata>,
    keys: arc_swap::ArcSwapOption<KeySet>,
    keys_fetched: std::sync::Mutex<Option<Instant>>,
}

/// The client secret: read from its file, never printed.
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn read(path: &Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("console.client_secret_file {}: {e}", path.display()))?;
        let secret = text.trim().to_owned();
        if secret.is_empty() {
            return Err(format!(
                "console.client_secret_file {} is empty",
                path.display()
            ));
        }
        Ok(Secret(secret))
    }
}

impl Provider {
    pub fn new(config: &crate::config::ConsoleConfig) -> Result<Arc<Provider>, String> {
        let connector = crate::tls::https_connector(
            config.oidc_ca_file.as_deref(),
            Duration::from_secs(5),
            false,
        )?;
        Ok(Arc::new(Provider {
            issuer: config.oidc_issuer.clone(),
            client_id: config.client_id.clone(),
            principal_claim: config.principal_claim.clone(),
            client_secret: Secret::read(&config.client_secret_file)?,
            redirect_url: config.redirect_url.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            metadata: tokio::sync::OnceCell::new(),
            keys: arc_swap::ArcSwapOption::empty(),
            keys_fetched: std::sync::Mutex::new(None),
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub async fn metadata(&self) -> Result<&Metadata, String> {
        self.metadata
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let bytes = self.get(&url).await?;
                Metadata::from_json(&bytes, &self.issuer)
            })
            .await
    }

    pub async fn authorization_url(&self, secrets: &LoginSecrets) -> Result<String, String> {
        let meta = self.metadata().await?;
        Ok(authorization_url(
            meta,
            &self.client_id,
            &self.redirect_url,
            secrets,
        ))
    }

    /// Redeems the code with this login's PKCE verifier and verifies the ID token it brings.
    /// Returns the identity and the raw ID token (kept for the provider's logout).
    pub async fn finish_login(
        &self,
        code: &str,
        secrets: &LoginSecrets,
    ) -> Result<(Identity, String), String> {
        let meta = self.metadata().await?;
        let form = web::form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_url),
            ("code_verifier", &secrets.verifier),
        ]);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            web::encode(&self.client_id),
            web::encode(&self.client_secret.0)
        ));
        let req = http::Request::post(meta.token_endpoint.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| format!("token request: {e}"))?;
        let (status, body) = self.send(req).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            format!("the provider's token endpoint answered {status} with something that is not a token response")
        })?;
        let id_token = match answer {
            TokenAnswer {
                id_token: Some(t), ..
            } if status.is_success() => t,
            TokenAnswer {
                error,
                error_description,
                ..
            } => {
                return Err(format!(
                    "the provider refused to redeem the login code ({status}: {}{})",
                    error.as_deref().unwrap_or("no error code"),
                    error_description
                        .map(|d| format!(", {d}"))
                        .unwrap_or_default()
                ))
            }
        };
        let expect = Expected {
            issuer: &self.issuer,
            client_id: &self.client_id,
            principal_claim: &self.principal_claim,
        };
        let identity = match self.keys.load_full() {
            Some(keys) => verify_id_token(&id_token, &keys, &expect, &secrets.nonce),
            None => Err(String::new()),
        };
        let identity = match identity {
            Ok(identity) => identity,
            // Keys not fetched yet, or rotated since: fetch them (rate-limited) and try again.
            Err(_) => {
                let keys = self.refresh_keys(&meta.jwks_uri).await?;
                verify_id_token(&id_token, &keys, &expect, &secrets.nonce)?
            }
        };
        Ok((identity, id_token))
    }

    async fn refresh_keys(&self, jwks_uri: &str) -> Result<Arc<KeySet>, String> {
        {
            let mut fetched = self.keys_fetched.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(at), Some(keys)) = (*fetched, self.keys.load_full()) {
                if at.elapsed() < KEY_REFETCH {
                    return Ok(keys);
                }
            }
            *fetched = Some(Instant::now());
        }
        let bytes = self.get(jwks_uri).await?;
        let keys =
            Arc::new(KeySet::from_json(&bytes).map_err(|e| format!("the provider's keys: {e}"))?);
        self.keys.store(Some(keys.clone()));
        Ok(keys)
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        match self.send(req).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, _) => Err(format!("{url} answered {status}")),
        }
    }

    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let target = format!("{}", req.uri());
        let exchange = async {
            let resp =
                self.client.request(req).await.map_err(|e| {
                    format!("the identity provider at {target} cannot be reached: {e}")
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| format!("{target}: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("the identity provider at {target} did not answer in time"))?
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
mod tests;
