//! The identity provider's signing keys: loaded from a file or fetched from a URL, swapped
//! atomically, refreshed in the background. A failed refresh keeps the last good set.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::Digest;

use super::IdentityError;
use crate::config::JwksSource;

/// Unknown `kid`s trigger a refresh at most this often, so a flood of forged tokens cannot
/// turn the gateway into a load generator against the identity provider.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
}

struct Key {
    decoding: DecodingKey,
    family: Family,
    /// The `alg` the key set pins this key to, if any.
    alg: Option<Algorithm>,
}

/// One immutable set of verification keys.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    without_kid: Vec<Key>,
    /// SHA-256 of the document the set came from.
    fingerprint: [u8; 32],
}

impl KeySet {
    /// Parses a JWKS document. Symmetric (`oct`) and unsupported keys are skipped.
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut out = KeySet {
            fingerprint: sha2::Sha256::digest(bytes).into(),
            ..KeySet::default()
        };
        for jwk in &set.keys {
            let Some(key) = convert(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    out.by_kid.insert(kid.clone(), key);
                }
                None => out.without_kid.push(key),
            }
        }
        if out.is_empty() {
            return Err("the JWKS has no usable RSA or EC (P-256/P-384) signing key".to_owned());
        }
        Ok(out)
    }

    pub fn load_file(path: &Path) -> Result<KeySet, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        KeySet::from_json(&bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.without_kid.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The key that may verify a token with this header. The key's family must fit the
    /// algorithm, and a key pinned to an algorithm accepts only that one (no confusion).
    pub(crate) fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&DecodingKey, IdentityError> {
        let fits = |k: &&Key| family_fits(k.family, alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                let key = self.by_kid.get(kid).ok_or(IdentityError::UnknownKey)?;
                if fits(&key) {
                    Ok(&key.decoding)
                } else {
                    Err(IdentityError::UnsupportedAlgorithm(format!(
                        "{alg:?} for this key"
                    )))
                }
            }
            None => {
                let mut candidates = self
                    .by_kid
                    .values()
                    .chain(self.without_kid.iter())
                    .filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Ok(&only.decoding),
                    _ => Err(IdentityError::UnknownKey),
                }
            }
        }
    }
}

fn family_fits(family: Family, alg: Algorithm) -> bool {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => family == Family::Rsa,
        Algorithm::ES256 => family == Family::P256,
        Algorithm::ES384 => family == Family::P384,
        _ => false,
    }
}

fn convert(jwk: &Jwk) -> Option<Key> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return None,
        },
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        // A key pinned to an algorithm we refuse (HS*, EdDSA, RSA1_5 …) is not usable.
        Some(_) => return None,
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        decoding,
        family,
        alg,
    })
}

/// The live key set, and how to refresh it.
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    generation: AtomicU64,
    source: JwksSource,
    fetcher: Option<crate::tls::HttpsClient>,
    refetch: tokio::sync::Mutex<Option<Instant>>,
    loaded: AtomicBool,
    /// Unix seconds of the last successful load or refresh (0: never).
    refreshed_at: AtomicU64,
    refresh_failures: AtomicU64,
}

impl KeyStore {
    /// A store whose keys come from a file: loaded now, an error if unusable.
    pub fn from_source(source: &JwksSource) -> Result<Arc<KeyStore>, String> {
        let (set, fetcher) = match source {
            JwksSource::File(path) => (KeySet::load_file(path)?, None),
            JwksSource::Url { ca_file, .. } => {
                let client = crate::tls::https_client(ca_file.as_deref(), Duration::from_secs(5))
                    .map_err(|e| format!("identity.jwks_ca: {e}"))?;
                (KeySet::default(), Some(client))
            }
        };
        let loaded = !set.is_empty();
        Ok(Arc::new(KeyStore {
            current: ArcSwap::from_pointee(set),
            generation: AtomicU64::new(1),
            source: source.clone(),
            fetcher,
            refetch: tokio::sync::Mutex::new(None),
            loaded: AtomicBool::new(loaded),
            refreshed_at: AtomicU64::new(if loaded { super::unix_now() } else { 0 }),
            refresh_failures: AtomicU64::new(0),
        }))
    }

    /// A store over a fixed key set (tests, benchmarks).
    pub fn fixed(set: KeySet) -> Arc<KeyStore> {
        Arc::new(KeyStore {
            current: ArcSwap::from_pointee(set),
            generation: AtomicU64::new(1),
            source: JwksSource::File(Default::default()),
            fetcher: None,
            refetch: tokio::sync::Mutex::new(None),
            loaded: AtomicBool::new(true),
            refreshed_at: AtomicU64::new(super::unix_now()),
            refresh_failures: AtomicU64::new(0),
        })
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// Changes whenever the key set is replaced; cached verifications from an older
    /// generation are re-checked, so a key the provider withdrew stops working at once.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True once a usable key set has been loaded.
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub(crate) fn install(&self, set: KeySet) {
        // The generation invalidates cached verifications; only a real change should cost
        // every caller a signature check.
        let changed = self.current.load().fingerprint != set.fingerprint;
        self.current.store(Arc::new(set));
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.loaded.store(true, Ordering::Release);
        self.refreshed_at
            .store(super::unix_now(), Ordering::Relaxed);
    }

    /// Seconds since the key set was last loaded, if it ever was.
    pub fn age_secs(&self) -> Option<u64> {
        match self.refreshed_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(super::unix_now().saturating_sub(at)),
        }
    }

    /// Refreshes that failed (the last good key set was kept).
    pub fn refresh_failures(&self) -> u64 {
        self.refresh_failures.load(Ordering::Relaxed)
    }

    /// Fetches the key set from `jwks_url` (or re-reads the file) and swaps it in.
    pub async fn refresh(&self) -> Result<usize, String> {
        let set = match &self.source {
            JwksSource::File(path) => KeySet::load_file(path)?,
            JwksSource::Url { url, .. } => {
                let client = self.fetcher.as_ref().ok_or("no HTTP client")?;
                let bytes = fetch(client, url).await?;
                KeySet::from_json(&bytes)?
            }
        };
        let n = set.len();
        self.install(set);
        Ok(n)
    }

    /// Called when a token names a `kid` we do not know: refresh, but at most once per
    /// `MIN_REFETCH_INTERVAL` and one caller at a time. Returns true if a refresh happened.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        if !matches!(self.source, JwksSource::Url { .. }) {
            return false;
        }
        let mut last = self.refetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        match self.refresh().await {
            Ok(_) => true,
            Err(e) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed; keeping the last good key set");
                false
            }
        }
    }

    /// Background refresh loop for `jwks_url`; returns at once for a file source.
    pub async fn run_refresh(self: Arc<Self>) {
        let JwksSource::Url { refresh, .. } = &self.source else {
            return;
        };
        let period = *refresh;
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            match self.refresh().await {
                Ok(n) => {
                    tracing::debug!(keys = n, "JWKS refreshed");
                    delay = period;
                }
                Err(e) => {
                    self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
                    // Retry sooner while we have nothing, never hammer.
                    delay = if self.is_ready() {
                        period
                    } else {
                        Duration::from_secs(2)
                    };
                }
            }
        }
    }
}

async fn fetch(client: &crate::tls::HttpsClient, url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "jwks_url is not a URI".to_owned())?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    // One deadline for the whole exchange: a provider that trickles its body must not hold
    // the refresh (and the unknown-kid lock) for ever.
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("JWKS fetch failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("JWKS fetch answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("JWKS body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "JWKS fetch timed out".to_owned())?
}
