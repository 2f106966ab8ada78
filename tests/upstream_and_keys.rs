//! Upstream TLS verification, and signing keys fetched from a JWKS URL: refreshed, re-fetched
//! for an unknown `kid` (rate-limited), and kept when the identity provider fails.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::Harness;
use gatehouse::dev::{generate_certs, TokenSigner, TokenSpec};
use gatehouse::standin::StandIn;
use gatehouse::testing::{FixtureOptions, AUDIENCE, ISSUER};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

async fn tls_standin(dir: &std::path::Path) -> (StandIn, std::path::PathBuf) {
    let certs = generate_certs(&[], "unused").unwrap();
    certs.write(dir).unwrap();
    let config =
        gatehouse::tls::server_config(&dir.join("gateway.crt"), &dir.join("gateway.key"), None)
            .unwrap();
    (
        StandIn::start_tls(config).await.unwrap(),
        dir.join("ca.crt"),
    )
}

/// The harness, but with every workspace forwarding to `upstream`.
async fn harness_for(upstream: &StandIn, options: FixtureOptions) -> Harness {
    let mut h = Harness::with(options.clone(), |_| {}).await;
    // Rebuild the fixture around the TLS stand-in (the harness's own plain stand-in stays idle).
    let dir = h.fixture.dir.clone();
    let running = h.running.take().unwrap();
    running.shutdown().await;
    h.fixture =
        gatehouse::testing::Fixture::create(&dir.join("tls"), &upstream.url(), &options).unwrap();
    let running = gatehouse::proxy::server::start(&h.fixture.config)
        .await
        .unwrap();
    h.port = running.data_addr.port();
    h.running = Some(running);
    h
}

#[tokio::test]
async fn a_tls_upstream_is_verified_against_the_configured_ca() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (upstream, ca) = tls_standin(certs_dir.path()).await;
    let h = harness_for(
        &upstream,
        FixtureOptions {
            upstream_ca: Some(ca),
            ..Default::default()
        },
    )
    .await;
    let r = h.get("/api/2.1/clusters/list", &h.service()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(upstream.saw_path("/api/2.1/clusters/list"));
    let blocked = h.get("/api/2.0/dbfs/read?path=/x", &h.service()).await;
    assert_eq!(blocked.status, StatusCode::FORBIDDEN);
    assert!(!upstream.saw_path("/api/2.0/dbfs/read"));
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_never_sent_the_request() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (upstream, _ca) = tls_standin(certs_dir.path()).await;
    // System roots only: the development CA is not among them.
    let h = harness_for(&upstream, FixtureOptions::default()).await;
    let r = h.get("/api/2.1/clusters/list", &h.service()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(upstream.seen().is_empty());
    let rid = r.headers["x-request-id"].to_str().unwrap();
    let done = h.completion_for(rid).await;
    assert_eq!(done["status"], 502);
    assert!(done["error"].as_str().unwrap().contains("upstream"));
}

/// A stand-in identity provider serving a JWKS document that the test can change or break.
struct Idp {
    url: String,
    jwks: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

async fn idp(initial: &str) -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(Some(initial.to_owned())));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (j, f) = (jwks.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (j, f) = (j.clone(), f.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = j.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(match body {
                            Some(b) => Response::new(Full::new(Bytes::from(b))),
                            None => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                r
                            }
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Idp { url, jwks, fetches }
}

fn merged(signers: &[&TokenSigner]) -> String {
    let keys: Vec<serde_json::Value> = signers
        .iter()
        .map(|s| {
            serde_json::from_str::<serde_json::Value>(s.jwks_json()).unwrap()["keys"][0].clone()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn token(s: &TokenSigner) -> String {
    s.token(&TokenSpec {
        issuer: ISSUER,
        audience: AUDIENCE,
        subject: "sp-aiml-prod",
        principal_type: "service_principal",
        groups: &[],
        ttl_secs: 600,
    })
}

async fn wait_ready(h: &Harness) {
    for _ in 0..100 {
        if h.admin_get("/readyz").await.starts_with("HTTP/1.1 200") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("keys never loaded");
}

#[tokio::test]
async fn keys_from_a_url_are_refreshed_refetched_for_new_kids_and_kept_on_failure() {
    let a = TokenSigner::generate("key-a").unwrap();
    let b = TokenSigner::generate("key-b").unwrap();
    let c = TokenSigner::generate("key-c").unwrap();
    let provider = idp(&merged(&[&a])).await;
    let h = Harness::with(
        FixtureOptions {
            jwks_url: Some(provider.url.clone()),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    wait_ready(&h).await;
    assert_eq!(
        h.get("/api/2.1/clusters/list", &token(&a)).await.status,
        StatusCode::OK
    );

    // The provider rotates in key B: the first token naming it triggers a re-fetch.
    *provider.jwks.lock().unwrap() = Some(merged(&[&a, &b]));
    assert_eq!(
        h.get("/api/2.1/clusters/list", &token(&b)).await.status,
        StatusCode::OK
    );

    // Right after, a token naming yet another unknown kid does not trigger a second re-fetch
    // (rate limit); it is refused as signed by an unknown key.
    let before = provider.fetches.load(Ordering::SeqCst);
    let r = h.get("/api/2.1/clusters/list", &token(&c)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("unknown key"));
    assert!(
        provider.fetches.load(Ordering::SeqCst) <= before + 1,
        "no fetch storm"
    );

    // The provider fails: the last good key set stays in use across background refreshes.
    *provider.jwks.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.get("/api/2.1/clusters/list", &token(&a)).await.status,
        StatusCode::OK
    );

    // It comes back with key C: the background refresh (every second here) picks it up.
    *provider.jwks.lock().unwrap() = Some(merged(&[&a, &b, &c]));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.get("/api/2.1/clusters/list", &token(&c)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_keys_requests_are_refused_not_passed() {
    let provider = idp("not json").await;
    let h = Harness::with(
        FixtureOptions {
            jwks_url: Some(provider.url.clone()),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let a = TokenSigner::generate("key-a").unwrap();
    let r = h.get("/api/2.1/clusters/list", &token(&a)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.admin_get("/readyz").await.starts_with("HTTP/1.1 503"));
    assert!(h.standin.seen().is_empty());
}
