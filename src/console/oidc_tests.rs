use super::*;
use crate::dev::TokenSigner;
use serde_json::json;

const ISSUER: &str = "https://login.bank.example";
const CLIENT: &str = "gatehouse-console";
const EXPECT: Expected<'static> = Expected {
    issuer: ISSUER,
    client_id: CLIENT,
    principal_claim: "sub",
};

fn signer_and_keys() -> (TokenSigner, KeySet) {
    let signer = TokenSigner::generate("k1").unwrap();
    let keys = KeySet::from_json(signer.jwks_json().as_bytes()).unwrap();
    (signer, keys)
}

fn claims(nonce: &str) -> serde_json::Value {
    let now = crate::identity::unix_now() as i64;
    json!({
        "iss": ISSUER, "aud": CLIENT, "sub": "alice", "nonce": nonce,
        "iat": now, "exp": now + 300, "name": "Alice Example",
        "email": "alice@bank.example", "groups": ["sec-auditors", "ds"],
    })
}

#[test]
fn a_valid_id_token_yields_who_logged_in_and_their_groups() {
    let (signer, keys) = signer_and_keys();
    let token = signer.sign(&claims("n-1"));
    let id = verify_id_token(&token, &keys, &EXPECT, "n-1").unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(id.name.as_deref(), Some("Alice Example"));
    assert_eq!(id.email.as_deref(), Some("alice@bank.example"));
    assert_eq!(id.groups, vec!["sec-auditors", "ds"]);
    let by_email = Expected {
        principal_claim: "email",
        ..EXPECT
    };
    let id = verify_id_token(&token, &keys, &by_email, "n-1").unwrap();
    assert_eq!(
        id.subject, "alice@bank.example",
        "named as the data path names her"
    );
    let by_upn = Expected {
        principal_claim: "upn",
        ..EXPECT
    };
    let err = verify_id_token(&token, &keys, &by_upn, "n-1").unwrap_err();
    assert!(err.contains("\"upn\""), "{err}");
}

#[test]
fn an_id_token_for_another_login_client_or_issuer_is_refused() {
    let (signer, keys) = signer_and_keys();
    let verify = |c: serde_json::Value| verify_id_token(&signer.sign(&c), &keys, &EXPECT, "n-1");
    let err = verify(claims("n-2")).unwrap_err();
    assert!(err.contains("nonce"), "{err}");
    let mut c = claims("n-1");
    c.as_object_mut().unwrap().remove("nonce");
    assert!(verify(c).unwrap_err().contains("nonce"));
    let mut c = claims("n-1");
    c["aud"] = json!("another-app");
    assert!(verify(c).is_err());
    let mut c = claims("n-1");
    c["iss"] = json!("https://impostor.example");
    assert!(verify(c).is_err());
    let mut c = claims("n-1");
    c["exp"] = json!(crate::identity::unix_now() as i64 - 3600);
    assert!(verify(c).is_err());
    let mut c = claims("n-1");
    c["aud"] = json!([CLIENT, "another-app"]);
    assert!(verify(c.clone()).unwrap_err().contains("azp"));
    c["azp"] = json!(CLIENT);
    assert!(verify(c).is_ok());
    let mut c = claims("n-1");
    c["azp"] = json!("another-app");
    assert!(
        verify(c).unwrap_err().contains("azp"),
        "a stated azp must be this client"
    );
}

#[test]
fn a_token_signed_by_another_key_or_with_a_shared_secret_is_refused() {
    let (_, keys) = signer_and_keys();
    let (other, _) = signer_and_keys();
    let err = verify_id_token(&other.sign(&claims("n-1")), &keys, &EXPECT, "n-1").unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims("n-1"),
        &jsonwebtoken::EncodingKey::from_secret(b"the client secret"),
    )
    .unwrap();
    let err = verify_id_token(&hs, &keys, &EXPECT, "n-1").unwrap_err();
    assert!(err.contains("not accepted"), "{err}");
    assert!(verify_id_token("not a token", &keys, &EXPECT, "n-1").is_err());
}

#[test]
fn an_id_token_naming_critical_extensions_is_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let (signer, keys) = signer_and_keys();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(signer.key_pem().as_bytes()).unwrap();
    let signed = |header: serde_json::Value| {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims("n-1").to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    };
    let plain = signed(json!({"alg": "ES256", "kid": "k1"}));
    assert!(verify_id_token(&plain, &keys, &EXPECT, "n-1").is_ok());
    let critical = signed(json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1}));
    let err = verify_id_token(&critical, &keys, &EXPECT, "n-1").unwrap_err();
    assert!(err.contains("crit"), "{err}");
}

#[test]
fn the_authorization_url_carries_state_nonce_and_an_s256_challenge() {
    let meta = Metadata {
        issuer: ISSUER.to_owned(),
        authorization_endpoint: format!("{ISSUER}/auth"),
        token_endpoint: format!("{ISSUER}/token"),
        jwks_uri: format!("{ISSUER}/jwks"),
        end_session_endpoint: None,
    };
    let secrets = LoginSecrets::generate();
    assert_eq!(secrets.verifier.len(), 43);
    assert_ne!(secrets.state, secrets.nonce);
    let url = authorization_url(
        &meta,
        CLIENT,
        "https://gw.example:9443/auth/callback",
        &secrets,
    );
    let uri: http::Uri = url.parse().unwrap();
    assert_eq!(uri.path(), "/auth");
    let query: std::collections::HashMap<String, String> =
        crate::console::web::parse_form(uri.query().unwrap())
            .into_iter()
            .collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], CLIENT);
    assert_eq!(
        query["redirect_uri"],
        "https://gw.example:9443/auth/callback"
    );
    assert_eq!(query["scope"], SCOPES);
    assert_eq!(query["state"], secrets.state);
    assert_eq!(query["nonce"], secrets.nonce);
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["code_challenge"], pkce_challenge(&secrets.verifier));
    assert!(
        !url.contains(&secrets.verifier),
        "the verifier never leaves the gateway"
    );
}

#[test]
fn the_s256_challenge_is_rfc_7636s() {
    // RFC 7636 appendix B.
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn discovery_must_name_the_configured_issuer() {
    let doc = json!({
        "issuer": ISSUER, "authorization_endpoint": "https://login.bank.example/auth",
        "token_endpoint": "https://login.bank.example/token", "jwks_uri": "https://login.bank.example/jwks",
    });
    let meta = Metadata::from_json(doc.to_string().as_bytes(), ISSUER).unwrap();
    assert_eq!(meta.token_endpoint, "https://login.bank.example/token");
    let err = Metadata::from_json(doc.to_string().as_bytes(), "https://other.example").unwrap_err();
    assert!(err.contains("not the configured"), "{err}");
    assert!(Metadata::from_json(b"{}", ISSUER).is_err());
}

#[test]
fn the_client_secret_never_prints() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "s3cr3t-value\n").unwrap();
    let secret = Secret::read(file.path()).unwrap();
    assert!(!format!("{secret:?}").contains("s3cr3t"));
    std::fs::write(file.path(), "  \n").unwrap();
    assert!(Secret::read(file.path()).unwrap_err().contains("empty"));
}
