//! Credentials → `Principal`.
//!
//! Bearer JWTs are verified against the bank's JWKS (asymmetric algorithms only) and the
//! verified claims are cached by a hash of the token, so a repeat caller costs one SHA-256 and
//! one map lookup. This module never logs or returns a token, and never trusts an unverified
//! claim.

mod jwks;
pub mod s3;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use jsonwebtoken::{Algorithm, Validation};
use sha2::{Digest, Sha256};

use crate::config::IdentityConfig;

pub use jwks::{KeySet, KeyStore};

/// Whether a principal is a person or a machine identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    ServicePrincipal,
    /// No credentials: only the login and discovery endpoints accept this.
    Anonymous,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServicePrincipal => "service_principal",
            PrincipalKind::Anonymous => "anonymous",
        }
    }
}

/// How the principal was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Jwt,
    /// An S3 access key id mapped in `[[s3.access_key]]` (a claim until the upstream
    /// accepts the signature).
    S3Key,
    /// The client's address is inside a workspace's `source_cidrs`.
    Network,
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::S3Key => "s3_access_key",
            AuthMethod::Network => "network",
            AuthMethod::None => "none",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub kind: PrincipalKind,
    pub groups: Vec<String>,
    pub auth: AuthMethod,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            id: "anonymous".to_owned(),
            kind: PrincipalKind::Anonymous,
            groups: Vec::new(),
            auth: AuthMethod::None,
        }
    }

    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }
}

/// Why a credential was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no credentials: send an OAuth access token as 'Authorization: Bearer <token>'")]
    Missing,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("personal access tokens are not accepted here: sign in with OAuth (databricks auth login) and use its access token")]
    PersonalAccessToken,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token has expired: sign in again")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token was issued by an issuer this gateway does not trust")]
    WrongIssuer,
    #[error("the token was not issued for this gateway (wrong audience)")]
    WrongAudience,
    #[error(
        "the token is signed with an unknown key (kid not in the identity provider's key set)"
    )]
    UnknownKey,
    #[error("the token uses algorithm {0}, which is not accepted (asymmetric RS*, PS*, ES256, ES384 only)")]
    UnsupportedAlgorithm(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has no subject (sub)")]
    NoSubject,
    #[error(
        "the token's header marks extensions as critical (crit), and this gateway implements none"
    )]
    CriticalExtension,
    #[error("the identity provider's signing keys are not available yet")]
    KeysUnavailable,
}

impl IdentityError {
    /// Stable rule id for the audit record and the error message.
    pub fn rule(&self) -> &'static str {
        match self {
            IdentityError::Missing | IdentityError::NotBearer => "identity.missing_token",
            IdentityError::PersonalAccessToken => "identity.pat_refused",
            IdentityError::KeysUnavailable => "identity.keys_unavailable",
            _ => "identity.invalid_token",
        }
    }
}

/// A verified principal with the moment its token stops being valid.
#[derive(Debug, Clone)]
struct CachedIdentity {
    principal: Arc<Principal>,
    expires_at: u64,
    key_generation: u64,
}

/// Verifies bearer tokens and remembers the ones it verified.
pub struct Verifier {
    config: IdentityConfig,
    keys: Arc<KeyStore>,
    cache: DashMap<[u8; 32], CachedIdentity>,
    cache_limit: usize,
    evictions: AtomicU64,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A groups claim as a list: an array of strings, or one string.
pub(crate) fn groups_of(claim: Option<&serde_json::Value>) -> Vec<String> {
    match claim {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    }
}

/// Signature algorithms a token may use: asymmetric only (HS256 could be minted by anyone
/// holding a shared secret), for the data path's tokens and the console's ID tokens alike.
pub(crate) const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

impl Verifier {
    pub fn new(config: IdentityConfig, keys: Arc<KeyStore>) -> Verifier {
        let cache_limit = config.token_cache_entries;
        Verifier {
            config,
            keys,
            cache: DashMap::new(),
            cache_limit,
            evictions: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Counts verified-token cache hits and misses in `metrics`.
    pub fn counting_in(mut self, metrics: Arc<crate::metrics::Metrics>) -> Verifier {
        self.metrics = Some(metrics);
        self
    }

    fn count_cache(&self, hit: bool) {
        if let Some(m) = &self.metrics {
            m.token_cache(hit);
        }
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Identifies the caller from the value of the `Authorization` header, if any.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Arc<Principal>, IdentityError> {
        let token = bearer_token(authorization)?;
        let now = unix_now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.keys.generation();
        if let Some(hit) = self.cache.get(&digest) {
            if hit.expires_at > now && hit.key_generation == generation {
                self.count_cache(true);
                return Ok(hit.principal.clone());
            }
        }
        self.count_cache(false);
        let (principal, expires_at) = self.verify(token)?;
        let principal = Arc::new(principal);
        self.remember(digest, principal.clone(), expires_at, generation, now);
        Ok(principal)
    }

    /// Verifies an `Authorization` value without the cache (`explain`, the cold benchmark).
    pub fn verify_header(&self, authorization: Option<&[u8]>) -> Result<Principal, IdentityError> {
        let token = bearer_token(authorization)?;
        self.verify(token).map(|(p, _)| p)
    }

    /// The `kid` a token names, when its key is not in the current set: the caller may ask
    /// the key store to refresh and try again.
    pub fn unknown_kid(&self, authorization: Option<&[u8]>) -> Option<String> {
        let token = bearer_token(authorization).ok()?;
        let header = decode_header(token).ok()?;
        let kid = header.kid?;
        (!self.keys.current().contains(&kid)).then_some(kid)
    }

    fn verify(&self, token: &str) -> Result<(Principal, u64), IdentityError> {
        let header = decode_header(token)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(IdentityError::UnsupportedAlgorithm(format!(
                "{:?}",
                header.alg
            )));
        }
        let set = self.keys.current();
        if set.is_empty() {
            return Err(IdentityError::KeysUnavailable);
        }
        let key = set.key_for(header.kid.as_deref(), header.alg)?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&self.config.issuers);
        validation.set_audience(&self.config.audiences);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(map_jwt_error)?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(IdentityError::NoSubject)?;
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .ok_or(IdentityError::Malformed("exp is not a number"))?;
        // A missing or unrecognised type is treated as a person: people are the more
        // restricted class everywhere, so a mistake here can only deny, never widen.
        let kind = match claims
            .get(&self.config.principal_type_claim)
            .and_then(|v| v.as_str())
        {
            Some("service_principal") => PrincipalKind::ServicePrincipal,
            _ => PrincipalKind::User,
        };
        let groups = groups_of(claims.get(&self.config.groups_claim));
        Ok((
            Principal {
                id: sub.to_owned(),
                kind,
                groups,
                auth: AuthMethod::Jwt,
            },
            exp,
        ))
    }

    fn remember(
        &self,
        digest: [u8; 32],
        principal: Arc<Principal>,
        expires_at: u64,
        key_generation: u64,
        now: u64,
    ) {
        if self.cache.len() >= self.cache_limit {
            // Bounded: drop what has expired first; if callers still fill it, start over
            // rather than grow (a cache miss only costs a signature check).
            self.cache.retain(|_, v| v.expires_at > now);
            if self.cache.len() >= self.cache_limit {
                self.cache.clear();
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.cache.insert(
            digest,
            CachedIdentity {
                principal,
                expires_at,
                key_generation,
            },
        );
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, IdentityError> {
    let value = authorization.ok_or(IdentityError::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| IdentityError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(IdentityError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(IdentityError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(IdentityError::Missing);
    }
    if token.starts_with("dapi") || token.starts_with("dose") || token.starts_with("dkea") {
        return Err(IdentityError::PersonalAccessToken);
    }
    if token.split('.').count() != 3 {
        return Err(IdentityError::Malformed(
            "a JWT has three dot-separated parts",
        ));
    }
    Ok(token)
}

/// A JWT's header, refused when it names critical extensions. jsonwebtoken reads only the
/// fields it knows and ignores `crit`, but RFC 7515 §4.1.11 requires refusing a token whose
/// `crit` lists an extension the recipient does not implement: this gateway implements none,
/// so any `crit` (even an empty list, which the RFC forbids) is refused. The data path and the
/// console's ID tokens both come through here.
pub(crate) fn decode_header(token: &str) -> Result<jsonwebtoken::Header, IdentityError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let malformed = || IdentityError::Malformed("cannot decode the JWT header");
    let encoded = token.split('.').next().ok_or_else(malformed)?;
    let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
    // Every member, whatever jsonwebtoken's `Header` knows of; serde_json resolves escapes in
    // names (`cr\u0069t`), and a duplicated name is there whichever copy wins.
    let members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| malformed())?;
    if members.contains_key("crit") {
        return Err(IdentityError::CriticalExtension);
    }
    jsonwebtoken::decode_header(token).map_err(|_| malformed())
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> IdentityError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => IdentityError::Expired,
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::InvalidSignature => IdentityError::BadSignature,
        ErrorKind::InvalidAlgorithm => IdentityError::UnsupportedAlgorithm("(mismatch)".into()),
        ErrorKind::MissingRequiredClaim(c) if c == "sub" => IdentityError::NoSubject,
        ErrorKind::MissingRequiredClaim(_) => {
            IdentityError::Malformed("a required claim (exp, iss, aud, sub) is missing")
        }
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
            IdentityError::BadSignature
        }
        _ => IdentityError::Malformed("cannot decode the token"),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests;
