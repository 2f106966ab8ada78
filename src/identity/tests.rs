use super::*;
use crate::dev::{TokenSigner, TokenSpec};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use std::time::Duration;

const ISS: &str = "https://idp.test";
const AUD: &str = "gatehouse";

fn config() -> IdentityConfig {
    IdentityConfig {
        jwks: crate::config::JwksSource::File(Default::default()),
        issuers: vec![ISS.into()],
        audiences: vec![AUD.into()],
        principal_type_claim: "principal_type".into(),
        groups_claim: "groups".into(),
        deny_groups: vec![],
        leeway: Duration::from_secs(30),
        token_cache_entries: 4,
    }
}

fn rsa_jwks() -> serde_json::Value {
    serde_json::from_str(include_str!("../../tests/fixtures/keys/test-rsa-jwks.json")).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/keys/test-rsa.pem")).unwrap()
}

/// A verifier that trusts the EC signer's key and the RSA fixture key.
fn setup() -> (Verifier, TokenSigner) {
    let signer = TokenSigner::generate("ec-1").unwrap();
    let mut keys: serde_json::Value = serde_json::from_str(signer.jwks_json()).unwrap();
    let rsa = rsa_jwks()["keys"][0].clone();
    keys["keys"].as_array_mut().unwrap().push(rsa);
    let set = KeySet::from_json(keys.to_string().as_bytes()).unwrap();
    (Verifier::new(config(), KeyStore::fixed(set)), signer)
}

fn spec<'a>(sub: &'a str, ttl: i64) -> TokenSpec<'a> {
    TokenSpec {
        issuer: ISS,
        audience: AUD,
        subject: sub,
        principal_type: "service_principal",
        groups: &["ml"],
        ttl_secs: ttl,
    }
}

fn bearer(t: &str) -> Vec<u8> {
    format!("Bearer {t}").into_bytes()
}

fn rsa_token(alg: Algorithm, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&h, &claims, &rsa_key()).unwrap()
}

fn claims(iss: &str, aud: &str, exp_from_now: i64) -> serde_json::Value {
    let now = unix_now() as i64;
    json!({"iss": iss, "aud": aud, "sub": "bob", "exp": now + exp_from_now, "nbf": now - 10, "groups": ["a", "b"]})
}

#[test]
fn a_valid_token_yields_its_principal() {
    let (v, s) = setup();
    let p = v
        .identify(Some(&bearer(&s.token(&spec("sp-1", 600)))))
        .unwrap();
    assert_eq!(p.id, "sp-1");
    assert_eq!(p.kind, PrincipalKind::ServicePrincipal);
    assert_eq!(p.groups, vec!["ml"]);
    assert_eq!(p.auth, AuthMethod::Jwt);
}

#[test]
fn rsa_tokens_verify_and_a_missing_type_means_a_person() {
    let (v, _) = setup();
    let p = v
        .identify(Some(&bearer(&rsa_token(
            Algorithm::RS256,
            claims(ISS, AUD, 600),
        ))))
        .unwrap();
    assert_eq!(p.id, "bob");
    assert_eq!(p.kind, PrincipalKind::User);
    assert_eq!(p.groups, vec!["a", "b"]);
}

#[test]
fn a_key_pinned_to_an_algorithm_accepts_no_other() {
    // The fixture JWKS pins the RSA key to RS256; a PS256 signature by the same key is refused.
    let (v, _) = setup();
    assert!(matches!(
        v.identify(Some(&bearer(&rsa_token(
            Algorithm::PS256,
            claims(ISS, AUD, 600)
        ))))
        .unwrap_err(),
        IdentityError::UnsupportedAlgorithm(_)
    ));
    // Without a pin, PS256 by an RSA key verifies.
    let mut jwks = rsa_jwks();
    jwks["keys"][0].as_object_mut().unwrap().remove("alg");
    let set = KeySet::from_json(jwks.to_string().as_bytes()).unwrap();
    let v = Verifier::new(config(), KeyStore::fixed(set));
    let p = v
        .identify(Some(&bearer(&rsa_token(
            Algorithm::PS256,
            claims(ISS, AUD, 600),
        ))))
        .unwrap();
    assert_eq!(p.id, "bob");
}

#[test]
fn each_refusal_says_what_is_wrong() {
    let (v, s) = setup();
    let cases: Vec<(Option<Vec<u8>>, IdentityError)> = vec![
        (None, IdentityError::Missing),
        (Some(b"Basic dXNlcjpw".to_vec()), IdentityError::NotBearer),
        (
            Some(bearer("dapi0123456789abcdef0123456789abcdef")),
            IdentityError::PersonalAccessToken,
        ),
        (
            Some(bearer("not-a-jwt")),
            IdentityError::Malformed("a JWT has three dot-separated parts"),
        ),
        (
            Some(bearer(&s.token(&spec("x", -120)))),
            IdentityError::Expired,
        ),
        (
            Some(bearer(&rsa_token(
                Algorithm::RS256,
                claims("https://evil", AUD, 600),
            ))),
            IdentityError::WrongIssuer,
        ),
        (
            Some(bearer(&rsa_token(
                Algorithm::RS256,
                claims(ISS, "other", 600),
            ))),
            IdentityError::WrongAudience,
        ),
    ];
    for (header, expected) in cases {
        assert_eq!(v.identify(header.as_deref()).unwrap_err(), expected);
    }
}

#[test]
fn expiry_within_the_leeway_still_verifies() {
    let (v, s) = setup();
    assert!(v.identify(Some(&bearer(&s.token(&spec("x", -5))))).is_ok());
}

#[test]
fn unknown_keys_hmac_none_and_algorithm_confusion_are_refused() {
    let (v, s) = setup();
    // A key id the provider never published.
    let other = TokenSigner::generate("ec-unknown").unwrap();
    assert_eq!(
        v.identify(Some(&bearer(&other.token(&spec("x", 600)))))
            .unwrap_err(),
        IdentityError::UnknownKey
    );
    // The same kid as a trusted key, signed by someone else.
    let forged = TokenSigner::generate("ec-1").unwrap();
    assert_eq!(
        v.identify(Some(&bearer(&forged.token(&spec("x", 600)))))
            .unwrap_err(),
        IdentityError::BadSignature
    );
    // HMAC with the public key material as the secret: the classic confusion attack.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("ec-1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &claims(ISS, AUD, 600),
        &EncodingKey::from_secret(s.jwks_json().as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        v.identify(Some(&bearer(&hs))).unwrap_err(),
        IdentityError::UnsupportedAlgorithm(_)
    ));
    // alg: none.
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(ISS, AUD, 600))
    );
    assert!(v.identify(Some(&bearer(&none))).is_err());
    // An RSA-signed header claiming the EC key's id.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec-1".into());
    let confused = jsonwebtoken::encode(&h, &claims(ISS, AUD, 600), &rsa_key()).unwrap();
    assert!(matches!(
        v.identify(Some(&bearer(&confused))).unwrap_err(),
        IdentityError::UnsupportedAlgorithm(_)
    ));
}

#[test]
fn verified_tokens_are_cached_bounded_and_dropped_on_key_rotation() {
    let (v, s) = setup();
    let t = bearer(&s.token(&spec("sp-1", 600)));
    let a = v.identify(Some(&t)).unwrap();
    let b = v.identify(Some(&t)).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second call must come from the cache");
    for i in 0..10 {
        let sub = format!("sp-{i}");
        v.identify(Some(&bearer(&s.token(&spec(&sub, 600)))))
            .unwrap();
        assert!(v.cached_tokens() <= 4);
    }
    // After the provider withdraws the key, the cached token no longer verifies.
    let t = bearer(&s.token(&spec("sp-x", 600)));
    v.identify(Some(&t)).unwrap();
    let rsa_only = KeySet::from_json(rsa_jwks().to_string().as_bytes()).unwrap();
    v.keys().install(rsa_only);
    assert_eq!(v.identify(Some(&t)).unwrap_err(), IdentityError::UnknownKey);
}

#[test]
fn symmetric_keys_in_a_jwks_are_ignored() {
    let set = KeySet::from_json(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#);
    assert!(set.is_err());
}

#[test]
fn refreshing_to_the_same_keys_keeps_cached_verifications() {
    let signer = TokenSigner::generate("ec-1").unwrap();
    let doc = signer.jwks_json().to_owned();
    let store = KeyStore::fixed(KeySet::from_json(doc.as_bytes()).unwrap());
    let v = Verifier::new(config(), store.clone());
    let t = bearer(&signer.token(&spec("sp-1", 600)));
    let a = v.identify(Some(&t)).unwrap();
    store.install(KeySet::from_json(doc.as_bytes()).unwrap());
    let b = v.identify(Some(&t)).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "an unchanged key set must not flush the cache"
    );
    let other = TokenSigner::generate("ec-2").unwrap();
    store.install(KeySet::from_json(other.jwks_json().as_bytes()).unwrap());
    assert_eq!(v.identify(Some(&t)).unwrap_err(), IdentityError::UnknownKey);
}

/// A token whose header is `header` exactly (jsonwebtoken's `Header` has no `crit`), signed
/// RS256 by the fixture key: the signature is good.
fn rsa_token_with_header(header: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let encode = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let message = format!("{}.{}", encode(&header), encode(&claims(ISS, AUD, 600)));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_key(), Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

#[test]
fn a_header_naming_critical_extensions_is_refused() {
    let (v, _) = setup();
    // The same header without `crit` verifies: only `crit` makes the difference.
    let plain = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});
    assert_eq!(
        v.identify(Some(&bearer(&rsa_token_with_header(plain))))
            .unwrap()
            .id,
        "bob"
    );
    // The gateway implements no extension, so any `crit` is one it does not understand
    // (RFC 7515 §4.1.11), even an empty list (which the RFC forbids) or a malformed one.
    for crit in [
        json!(["exp"]),
        json!(["b64"]),
        json!(["http://example.com/ext"]),
        json!([]),
        json!("exp"),
        json!(null),
    ] {
        let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1", "b64": true});
        header["crit"] = crit.clone();
        let token = rsa_token_with_header(header);
        let e = v.identify(Some(&bearer(&token))).unwrap_err();
        assert_eq!(e, IdentityError::CriticalExtension, "crit = {crit}");
        assert_eq!(e.rule(), "identity.invalid_token");
        assert!(e.to_string().contains("crit"), "{e}");
        // Not remembered either: the same token is refused again.
        assert!(v.identify(Some(&bearer(&token))).is_err());
    }
    // Spelled with an escape, it is still `crit`.
    let header = r#"{"alg":"RS256","kid":"rsa-1","cr\u0069t":["exp"]}"#;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims(ISS, AUD, 600).to_string())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_key(), Algorithm::RS256).unwrap();
    assert_eq!(
        v.identify(Some(&bearer(&format!("{message}.{signature}"))))
            .unwrap_err(),
        IdentityError::CriticalExtension
    );
}
