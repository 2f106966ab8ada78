//! The real gateway on real sockets: TLS, HTTP/1.1 and h2, in front of the recording
//! stand-in. Every blocked request is checked to have never reached the upstream.

mod common;

use std::time::Duration;

use common::{fixture_rows, Harness};
use gatehouse::testing::{FixtureOptions, ANALYTICS_HOST, PARALLEL_HOST, PROD_HOST};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn method(m: &str) -> Method {
    m.parse().unwrap()
}

#[tokio::test]
async fn allowed_requests_reach_the_upstream_with_forwarding_headers() {
    let h = Harness::start().await;
    let token = h.alice();
    for h2 in [false, true] {
        let r = h
            .send(
                h2,
                Method::GET,
                ANALYTICS_HOST,
                "/api/2.1/clusters/list",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "h2={h2}");
        assert!(r.json()["clusters"].is_array());
        let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
        let seen = h.standin.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.path, "/api/2.1/clusters/list");
        assert_eq!(last.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(last.headers["x-forwarded-proto"], "https");
        assert!(last.headers["x-forwarded-host"]
            .to_str()
            .unwrap()
            .starts_with(ANALYTICS_HOST));
        assert_eq!(last.headers["x-request-id"].to_str().unwrap(), rid);
        // Host is pinned to the workspace's upstream, whatever the client's protocol.
        assert_eq!(
            last.headers["host"].to_str().unwrap(),
            h.standin.url().trim_start_matches("http://"),
            "h2={h2}"
        );
        // The workspace authenticates the same OAuth token.
        assert_eq!(
            last.headers["authorization"].to_str().unwrap(),
            format!("Bearer {token}")
        );
        let records = h.records_for(&rid);
        assert_eq!(records[0]["phase"], "decision");
        assert_eq!(records[0]["decision"]["effect"], "allow");
        assert_eq!(records[0]["principal"]["id"], "alice@bank.example");
        assert_eq!(records[0]["workspace"], "prod-analytics");
        let done = h.completion_for(&rid).await;
        assert_eq!(done["status"], 200);
        assert!(done["bytes_out"].as_u64().unwrap() > 0);
        assert!(
            done["error"].is_null(),
            "a complete exchange has no error: {done}"
        );
        assert!(done["seq"].as_u64() > records[0]["seq"].as_u64());
    }
}

#[tokio::test]
async fn a_client_request_id_is_kept_and_recorded() {
    let h = Harness::start().await;
    let raw = format!(
        "GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {}\r\nx-request-id: client-abc-123\r\nConnection: close\r\n\r\n",
        h.alice()
    );
    let answer = h.raw(ANALYTICS_HOST, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("x-request-id: client-abc-123"));
    assert_eq!(
        h.standin.seen()[0].headers["x-request-id"],
        "client-abc-123"
    );
    assert_eq!(h.records_for("client-abc-123")[0]["phase"], "decision");
}

/// Every download and credentials row of the catalog, over both protocols: 403 in the
/// Databricks shape, and nothing reaches the stand-in.
#[tokio::test]
async fn every_blocked_catalog_row_is_denied_and_never_forwarded() {
    let h = Harness::start().await;
    let token = h.service();
    let rows: Vec<Vec<String>> = fixture_rows("databricks_catalog.tsv")
        .into_iter()
        .filter(|r| r.len() >= 4 && (r[3] == "download" || r[3] == "credentials"))
        .collect();
    assert!(rows.len() > 50, "catalog fixture too small: {}", rows.len());
    for (i, row) in rows.iter().enumerate() {
        let h2 = i % 2 == 1;
        let body = (row[0] == "POST").then(|| b"{}".to_vec());
        let r = h
            .send(
                h2,
                method(&row[0]),
                ANALYTICS_HOST,
                &row[1],
                Some(&token),
                body,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{} {} (h2={h2})",
            row[0],
            row[1]
        );
        let json = r.json();
        assert_eq!(json["error_code"], "PERMISSION_DENIED", "{}", row[1]);
        let message = json["message"].as_str().unwrap();
        let rid = r.headers["x-request-id"].to_str().unwrap();
        assert!(
            message.contains(rid),
            "message names the request id: {message}"
        );
        assert!(
            message.contains("downloads.blocked") || message.contains("credentials.blocked"),
            "{message}"
        );
        let decision = &h.records_for(rid)[0];
        assert_eq!(decision["action"]["name"], row[2].as_str(), "{}", row[1]);
        assert_eq!(decision["decision"]["effect"], "deny");
    }
    assert!(
        h.standin.seen().is_empty(),
        "blocked requests reached the upstream: {:?}",
        h.standin.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
    );
}

/// Path tricks sent as raw bytes (no client library tidies them): refused or denied,
/// never forwarded.
#[tokio::test]
async fn the_bypass_corpus_never_reaches_the_upstream() {
    let h = Harness::start().await;
    let token = h.service();
    let rows = fixture_rows("bypass_corpus.tsv");
    assert!(rows.len() > 40);
    for row in &rows {
        let (m, target, expected) = (&row[0], &row[1], &row[2]);
        let raw = format!(
            "{m} {target} HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = h.raw(ANALYTICS_HOST, raw.as_bytes()).await;
        let status_line = answer.lines().next().unwrap_or("");
        if expected == "REFUSE" {
            assert!(
                status_line.starts_with("HTTP/1.1 400"),
                "{target}: {status_line}"
            );
        } else {
            assert!(
                status_line.starts_with("HTTP/1.1 403") || status_line.starts_with("HTTP/1.1 400"),
                "{target}: {status_line}"
            );
        }
    }
    assert!(
        h.standin.seen().is_empty(),
        "bypass reached the upstream: {:?}",
        h.standin.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn framing_and_routing_tricks_are_refused() {
    let h = Harness::start().await;
    let t = h.service();
    let cases: Vec<(&str, String, &str)> = vec![
        // SNI names one workspace, Host another.
        (
            PARALLEL_HOST,
            format!("GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
            "HTTP/1.1 421",
        ),
        (
            ANALYTICS_HOST,
            format!("GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nHost: {PROD_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            ANALYTICS_HOST,
            format!("POST /api/2.0/dbfs/mkdirs HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            ANALYTICS_HOST,
            format!("POST /api/2.0/dbfs/mkdirs HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        // A method override could turn an allowed GET into something else upstream.
        (
            ANALYTICS_HOST,
            format!("GET /api/2.0/dbfs/list?path=/ HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nX-HTTP-Method-Override: DELETE\r\nConnection: close\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        // Absolute-form naming another host than Host.
        (
            ANALYTICS_HOST,
            format!("GET https://{PROD_HOST}/api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        // Absolute-form hiding a blocked path.
        (
            ANALYTICS_HOST,
            format!("GET https://{ANALYTICS_HOST}/api/2.0/%64bfs/read?path=/x HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
            "HTTP/1.1 403",
        ),
    ];
    for (sni, raw, expected) in cases {
        let answer = h.raw(sni, raw.as_bytes()).await;
        assert!(
            answer.starts_with(expected),
            "{}\n=> {}",
            raw.lines().next().unwrap(),
            answer.lines().next().unwrap_or("")
        );
    }
    assert!(h.standin.seen().is_empty());
}

#[tokio::test]
async fn an_unknown_host_is_denied_and_audited() {
    // The certificate covers "localhost", but no workspace routes it here.
    let h = Harness::with(
        FixtureOptions {
            analytics_aliases: vec![],
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let raw = format!(
        "GET /api/2.1/clusters/list HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        h.service()
    );
    let answer = h.raw("localhost", raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("route.unknown_host"));
    let decision = h
        .trail()
        .into_iter()
        .find(|r| r["phase"] == "decision")
        .unwrap();
    assert_eq!(decision["decision"]["rule"], "route.unknown_host");
    assert!(h.standin.seen().is_empty());
}

#[tokio::test]
async fn identity_failures_are_401_in_databricks_shape_without_echoing_tokens() {
    let h = Harness::start().await;
    let pat = "dapi0123456789abcdef0123456789abcdef";
    let expired = h.fixture.signer.token(&gatehouse::dev::TokenSpec {
        issuer: gatehouse::testing::ISSUER,
        audience: gatehouse::testing::AUDIENCE,
        subject: "alice@bank.example",
        principal_type: "user",
        groups: &[],
        ttl_secs: -3600,
    });
    for (token, needle) in [
        (None, "no credentials"),
        (Some(pat), "OAuth"),
        (Some(expired.as_str()), "expired"),
        (Some("a.b.c"), "malformed"),
    ] {
        let r = h
            .send(
                false,
                Method::GET,
                ANALYTICS_HOST,
                "/api/2.1/clusters/list",
                token,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let json = r.json();
        assert_eq!(json["error_code"], "UNAUTHENTICATED");
        let msg = json["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
        if let Some(t) = token {
            assert!(!msg.contains(t), "the message must not echo the token");
        }
    }
    assert!(h.standin.seen().is_empty());
    let text = gatehouse::testing::trail_text(&h.fixture.audit_dir);
    assert!(!text.contains(pat) && !text.contains(&expired));
}

/// A correctly signed token from the trusted provider whose header marks an extension as
/// critical (RFC 7515 §4.1.11): the gateway implements none, so it is refused.
#[tokio::test]
async fn a_token_with_critical_header_extensions_is_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let h = Harness::start().await;
    let signer = &h.fixture.signer;
    let jwks: serde_json::Value = serde_json::from_str(signer.jwks_json()).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(signer.key_pem().as_bytes()).unwrap();
    // The claims of an ordinary, valid token for a service principal.
    let valid = h.service();
    let claims = valid.split('.').nth(1).unwrap().to_owned();
    let with_header = |header: serde_json::Value| {
        let message = format!("{}.{claims}", URL_SAFE_NO_PAD.encode(header.to_string()));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        format!("{message}.{signature}")
    };
    let list = async |token: &str| {
        h.send(
            false,
            Method::GET,
            ANALYTICS_HOST,
            "/api/2.1/clusters/list",
            Some(token),
            None,
        )
        .await
    };
    let plain = with_header(serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}));
    assert_eq!(
        list(&plain).await.status,
        StatusCode::OK,
        "signed as it should be"
    );
    for crit in [serde_json::json!(["exp"]), serde_json::json!([])] {
        let token = with_header(serde_json::json!({
            "alg": "ES256", "typ": "JWT", "kid": kid, "crit": crit, "exp": 0,
        }));
        let r = list(&token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "crit = {crit}");
        let json = r.json();
        assert_eq!(json["error_code"], "UNAUTHENTICATED");
        let msg = json["message"].as_str().unwrap();
        assert!(
            msg.contains("identity.invalid_token") && msg.contains("crit"),
            "{msg}"
        );
        let rid = r.headers["x-request-id"].to_str().unwrap();
        assert_eq!(
            h.records_for(rid)[0]["decision"]["rule"],
            "identity.invalid_token"
        );
    }
    assert_eq!(h.standin.seen().len(), 1, "only the plain token's request");
}

#[tokio::test]
async fn login_endpoints_pass_without_a_token_and_are_audited() {
    let h = Harness::start().await;
    for path in [
        "/.well-known/databricks-config",
        "/oidc/.well-known/oauth-authorization-server",
    ] {
        let r = h
            .send(false, Method::GET, ANALYTICS_HOST, path, None, None)
            .await;
        assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(h.standin.saw_path(path), "{path}");
        let rid = r.headers["x-request-id"].to_str().unwrap();
        let d = &h.records_for(rid)[0];
        assert_eq!(d["principal"]["type"], "anonymous");
        assert_eq!(d["decision"]["rule"], "auth.discovery");
    }
}

#[tokio::test]
async fn workspace_modes_hold_for_people() {
    let h = Harness::start().await;
    let alice = h.alice();
    let bob = h.token("bob@bank.example", "user", &["aiml-release-managers"]);
    let sp = h.service();
    let config = br#"{"served_entities":[],"traffic_config":{"routes":[{"served_model_name":"m","traffic_percentage":10}]}}"#.to_vec();
    type Case<'a> = (
        &'a str,
        &'a str,
        Method,
        &'a str,
        Option<Vec<u8>>,
        StatusCode,
    );
    let cases: Vec<Case> = vec![
        (
            PROD_HOST,
            &alice,
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            PROD_HOST,
            &sp,
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            StatusCode::OK,
        ),
        (
            PARALLEL_HOST,
            &alice,
            Method::PUT,
            "/api/2.0/serving-endpoints/fraud/config",
            Some(config.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            PARALLEL_HOST,
            &bob,
            Method::PUT,
            "/api/2.0/serving-endpoints/fraud/config",
            Some(config.clone()),
            StatusCode::OK,
        ),
        (
            PARALLEL_HOST,
            &bob,
            Method::GET,
            "/api/2.0/serving-endpoints/fraud",
            None,
            StatusCode::OK,
        ),
        (
            PARALLEL_HOST,
            &bob,
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            PARALLEL_HOST,
            &sp,
            Method::GET,
            "/api/2.1/clusters/list",
            None,
            StatusCode::OK,
        ),
    ];
    for (host, token, m, path, body, expected) in cases {
        let before = h.standin.seen().len();
        let r = h.send(true, m.clone(), host, path, Some(token), body).await;
        assert_eq!(r.status, expected, "{host} {m} {path}");
        assert_eq!(
            h.standin.seen().len() > before,
            expected == StatusCode::OK,
            "{host} {path}"
        );
    }
    let tenant = h.token("m@bank.example", "user", &["tenant-martech"]);
    let r = h.get("/api/2.1/clusters/list", &tenant).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("principal.denied_group"));
}

/// `human_groups` on a workspace where people are allowed: from the reload on, only its
/// members act there as people; service principals are not concerned.
#[tokio::test]
async fn human_groups_say_which_people_act_where_people_are_allowed() {
    let h = Harness::start().await;
    let alice = h.alice(); // data-scientists
    let bob = h.token("bob@bank.example", "user", &["retail-banking"]);
    let sp = h.service();
    let list = async |token: &str| h.get("/api/2.1/clusters/list", token).await;
    // Empty (the fixture): anyone with a token, as before.
    assert_eq!(list(&bob).await.status, StatusCode::OK);

    let path = &h.fixture.config_path;
    let original = std::fs::read_to_string(path).unwrap();
    let analytics = "name = \"prod-analytics\"\n";
    assert!(original.contains(analytics));
    let narrowed = original.replacen(
        analytics,
        &format!("{analytics}human_groups = [\"data-scientists\", \"aiml-engineering\"]\n"),
        1,
    );
    std::fs::write(path, narrowed).unwrap();
    let outcome = h.running().reload();
    assert!(outcome.applied, "{outcome:?}");

    let seen = h.standin.seen().len();
    let r = list(&bob).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("workspace.humans_denied"), "{message}");
    assert!(
        message.contains("data-scientists, aiml-engineering"),
        "{message}"
    );
    assert_eq!(h.standin.seen().len(), seen, "never forwarded");
    assert_eq!(list(&alice).await.status, StatusCode::OK);
    assert_eq!(list(&sp).await.status, StatusCode::OK);
    assert_eq!(h.standin.seen().len(), seen + 2);
}

#[tokio::test]
async fn unknown_apis_are_denied_by_default_and_recorded_when_configured() {
    let h = Harness::start().await;
    let r = h
        .get("/api/2.0/some-new-api/export-everything", &h.service())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("api.unknown"));
    assert!(h.standin.seen().is_empty());

    let h = Harness::with(
        FixtureOptions {
            unknown_api: "record",
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = h.get("/api/2.0/some-new-api/list", &h.service()).await;
    assert_eq!(r.status, StatusCode::OK);
    let rid = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(
        h.records_for(rid)[0]["decision"]["rule"],
        "api.unknown.recorded"
    );
}

/// A rule in `[policy] report_only` lets the request through and records the rule that would
/// have denied it; rules not listed, and identity rules, still bite.
#[tokio::test]
async fn report_only_rules_forward_and_record_what_they_would_have_denied() {
    let h = Harness::with(
        FixtureOptions {
            report_only: vec!["api.unknown".into(), "workspace.humans_denied".into()],
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = h.get("/api/2.0/some-new-api/list", &h.service()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.standin.saw_path("/api/2.0/some-new-api/list"));
    let rid = r.headers["x-request-id"].to_str().unwrap();
    let decision = &h.records_for(rid)[0]["decision"];
    assert_eq!(decision["effect"], "allow");
    assert_eq!(decision["would_deny"], "api.unknown");

    // A person in the production workspace: watched, not blocked.
    let r = h
        .send(
            false,
            Method::GET,
            PROD_HOST,
            "/api/2.1/clusters/list",
            Some(&h.alice()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let rid = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(
        h.records_for(rid)[0]["decision"]["would_deny"],
        "workspace.humans_denied"
    );

    // Downloads are not in report mode: still denied, never forwarded, no would_deny.
    let before = h.standin.seen().len();
    let r = h.get("/api/2.0/dbfs/read?path=/x", &h.service()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(h.standin.seen().len(), before);
    let rid = r.headers["x-request-id"].to_str().unwrap();
    let decision = &h.records_for(rid)[0]["decision"];
    assert_eq!(decision["effect"], "deny");
    assert!(decision.get("would_deny").is_none());

    // No token at all is an identity rule: 401 whatever report_only says.
    let r = h
        .send(
            false,
            Method::GET,
            ANALYTICS_HOST,
            "/api/2.0/some-new-api/list",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bodies_are_inspected_where_the_decision_depends_on_them() {
    let h = Harness::start().await;
    let t = h.alice();
    let post = |path: &'static str, body: Vec<u8>| {
        let h = &h;
        let t = t.clone();
        async move {
            h.send(
                true,
                Method::POST,
                ANALYTICS_HOST,
                path,
                Some(&t),
                Some(body),
            )
            .await
        }
    };
    let r = post(
        "/api/2.0/sql/statements",
        br#"{"statement":"select 1","warehouse_id":"w","disposition":"EXTERNAL_LINKS"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(
        "/api/2.0/sql/statements",
        br#"{"disposition":"INLINE","disposition":"external_links"}"#.to_vec(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "duplicate keys must not hide EXTERNAL_LINKS"
    );
    let r = post(
        "/api/1.2/commands/execute",
        br#"{"clusterId":"c","contextId":"x","language":"python","command":"%fs ls /"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post("/api/2.0/sql/statements", b"not json".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut big = br#"{"statement":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', (1 << 20) + 10));
    big.extend(br#""}"#);
    let r = post("/api/2.0/sql/statements", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        h.standin.seen().is_empty(),
        "nothing inspected-and-denied may be forwarded"
    );

    let inline = br#"{"statement":"select 1","warehouse_id":"w","disposition":"INLINE"}"#.to_vec();
    let len = inline.len();
    let r = post("/api/2.0/sql/statements", inline).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        h.standin.seen()[0].body_len,
        len,
        "the inspected body is forwarded intact"
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_and_bytes_are_recorded() {
    let h = Harness::start().await;
    let t = h.service();
    let upload = vec![7u8; 8 << 20];
    let r = h
        .send(
            false,
            Method::PUT,
            ANALYTICS_HOST,
            "/api/2.0/fs/files/Volumes/main/lab/v/model.bin",
            Some(&t),
            Some(upload),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["received_bytes"], 8 << 20);
    let rid = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(h.completion_for(rid).await["bytes_in"], 8 << 20);

    let r = h.get("/static/big.bin?bytes=16777216", &t).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 16 << 20);
    let rid = r.headers["x-request-id"].to_str().unwrap();
    let done = h.completion_for(rid).await;
    assert_eq!(done["bytes_out"], 16 << 20);
    assert!(done["error"].is_null(), "{done}");
}

#[tokio::test]
async fn secrets_never_reach_the_trail() {
    let h = Harness::start().await;
    let t = h.service();
    let r = h
        .get(
            "/api/2.1/clusters/list?access_token=SEKRIT-TOKEN&cluster=1",
            &t,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    h.completion_for(&rid).await;
    let text = gatehouse::testing::trail_text(&h.fixture.audit_dir);
    assert!(!text.contains("SEKRIT-TOKEN"));
    assert!(!text.contains(&t));
    assert!(!text.to_ascii_lowercase().contains("authorization"));
    assert_eq!(
        h.records_for(&rid)[0]["request"]["query"],
        "access_token=***&cluster=1"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_unwritable_trail_refuses_with_503_forwards_nothing_and_recovers_by_itself() {
    let full = |audit_dir: &std::path::Path| {
        audit_dir.join(gatehouse::audit::segment::segment_name("gw-test", 1))
    };
    let h = Harness::with(FixtureOptions::default(), |audit_dir| {
        std::fs::create_dir_all(audit_dir).unwrap();
        // A segment that lives on a full disk: every write fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", full(audit_dir)).unwrap();
    })
    .await;
    let r = h.get("/api/2.1/clusters/list", &h.service()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["message"].as_str().unwrap().contains("audit"));
    assert!(h.standin.seen().is_empty());
    // Readiness reports it.
    let ready = h.admin_get("/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");

    // Space comes back: the next request is written, forwarded and recorded, with no restart.
    std::fs::remove_file(full(&h.fixture.audit_dir)).unwrap();
    let r = h.get("/api/2.1/clusters/list", &h.service()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.standin.seen().len(), 1);
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    h.completion_for(&rid).await;
    assert!(h.admin_get("/readyz").await.starts_with("HTTP/1.1 200"));
    let reports = gatehouse::audit::verify::verify_dir(&h.fixture.audit_dir, None).unwrap();
    assert_eq!(reports[0].first_seq, Some(1));
    // The start and configuration records the full disk refused were kept and come first.
    let trail = h.trail();
    let phases: Vec<&str> = trail.iter().map(|r| r["phase"].as_str().unwrap()).collect();
    assert_eq!(phases[..4], ["start", "config", "decision", "completion"]);
}

#[tokio::test]
async fn health_and_readiness_answer_on_the_admin_listener() {
    let h = Harness::start().await;
    assert!(h.admin_get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(h.admin_get("/readyz").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn websocket_upgrades_pass_after_the_same_checks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let tls = gatehouse::tls::client_config(Some(&h.fixture.ca_cert)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let upgrade = |token: Option<String>| {
        format!(
            "GET /ws/notebook HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{}\r\n",
            token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default()
        )
    };
    // Without a token: refused like any request.
    let answer = h.raw(ANALYTICS_HOST, upgrade(None).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(ANALYTICS_HOST).unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(upgrade(Some(h.alice())).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-through-gatehouse").await.unwrap();
    let mut echoed = vec![0u8; 22];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping-through-gatehouse");
    assert!(h.standin.saw_path("/ws/notebook"));
}

/// A WebSocket opened before a reload keeps working on the configuration it started with, even
/// when the reload denies its caller: a reload never tears down open tunnels. New upgrades get
/// the new rules.
#[tokio::test]
async fn an_open_websocket_survives_a_reload_that_denies_new_ones() {
    let h = Harness::start().await;
    let tls = gatehouse::tls::client_config(Some(&h.fixture.ca_cert)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let upgrade = format!(
        "GET /ws/notebook HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        h.alice()
    );
    let tcp = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(ANALYTICS_HOST).unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(upgrade.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));

    // Alice's group is denied from now on.
    assert!(h.deny_data_scientists_and_reload().applied);

    // The open tunnel still carries bytes both ways.
    for round in 0..3 {
        let msg = format!("frame-{round}-after-reload");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
            .await
            .expect("the tunnel answered in time")
            .expect("the tunnel is still open");
        assert_eq!(echoed, msg.as_bytes());
    }
    // A new upgrade by the same caller is refused under the new rules.
    let answer = h.raw(ANALYTICS_HOST, upgrade.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

/// A browser signed in to the review console sends its cookies to every port of that host
/// name; a workspace reached under it gets the other cookies, never the console's.
#[tokio::test]
async fn the_review_consoles_cookies_are_not_forwarded() {
    let h = Harness::start().await;
    let client = gatehouse::testing::local_client(&h.fixture.ca_cert, false).unwrap();
    let req = http::Request::get(h.url(ANALYTICS_HOST, "/api/2.1/clusters/list"))
        .header("authorization", format!("Bearer {}", h.alice()))
        .header(
            "cookie",
            "__Host-gatehouse-console=console-session-id; workspace-pref=dark",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = h.standin.seen();
    let cookies: Vec<_> = seen
        .last()
        .unwrap()
        .headers
        .get_all("cookie")
        .iter()
        .collect();
    assert_eq!(cookies, ["workspace-pref=dark"]);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    use http_body_util::BodyExt;
    let h = Harness::start().await;
    let client = gatehouse::testing::local_client(&h.fixture.ca_cert, false).unwrap();
    let req = http::Request::get(h.url(ANALYTICS_HOST, "/static/big.bin?bytes=33554432"))
        .header("authorization", format!("Bearer {}", h.service()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Headers are in; the body is still streaming when shutdown starts.
    let port = h.port;
    let stopping = tokio::spawn(async move { h.stop().await });
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 32 << 20);
    let h = stopping.await.unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    // The completion of the in-flight request made it into the trail before exit.
    assert!(h
        .trail()
        .iter()
        .any(|r| r["phase"] == "completion" && r["bytes_out"] == 32 << 20));
}

#[tokio::test]
async fn ambiguous_headers_and_tunnels_are_refused() {
    let h = Harness::start().await;
    let t = h.service();
    let cases: Vec<(String, &str)> = vec![
        // Two credentials: the upstream might pick the other one.
        (format!("GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer dapi0123456789abcdef0123456789abcdef\r\nConnection: close\r\n\r\n"), "HTTP/1.1 400"),
        // A GET with a body: the decision is made on the URL alone.
        (format!("GET /api/2.1/unity-catalog/secrets/x HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{{\"include_value\":true}}"), "HTTP/1.1 400"),
        // h2c (or any non-WebSocket) upgrade would be an unclassified tunnel.
        (format!("GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"), "HTTP/1.1 400"),
        // A compressed body where the body decides.
        (format!("POST /api/2.0/sql/statements HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"), "HTTP/1.1 400"),
        // Bare-LF head with both framing headers (hyper accepts bare LF line endings).
        (format!("POST /api/2.0/dbfs/mkdirs HTTP/1.1\nHost: {ANALYTICS_HOST}\nAuthorization: Bearer {t}\nContent-Length: 7\nTransfer-Encoding: chunked\nConnection: close\n\n2\r\n{{}}\r\n0\r\n\r\n"), "HTTP/1.1 400"),
    ];
    for (raw, expected) in cases {
        let answer = h.raw(ANALYTICS_HOST, raw.as_bytes()).await;
        assert!(
            answer.starts_with(expected),
            "{}\n=> {}",
            raw.lines().next().unwrap(),
            answer.lines().next().unwrap_or("")
        );
    }
    assert!(h.standin.seen().is_empty());
}

#[tokio::test]
async fn the_exchange_id_joins_records_even_when_clients_reuse_request_ids() {
    let h = Harness::start().await;
    let t = h.service();
    for _ in 0..2 {
        let raw = format!("GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nx-request-id: same-id\r\nConnection: close\r\n\r\n");
        assert!(h
            .raw(ANALYTICS_HOST, raw.as_bytes())
            .await
            .starts_with("HTTP/1.1 200"));
    }
    let _ = h.completion_for("same-id").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = h.records_for("same-id");
    let decisions: Vec<&str> = records
        .iter()
        .filter(|r| r["phase"] == "decision")
        .map(|r| r["exchange"].as_str().unwrap())
        .collect();
    assert_eq!(decisions.len(), 2);
    assert_ne!(decisions[0], decisions[1]);
    for e in decisions {
        assert_eq!(
            records.iter().filter(|r| r["exchange"] == e).count(),
            2,
            "decision + completion for {e}"
        );
    }
}

#[tokio::test]
async fn websocket_tunnels_are_named_in_the_trail() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let raw = format!("GET /ws/notebook HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n", h.alice());
    let tls = gatehouse::tls::client_config(Some(&h.fixture.ca_cert)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    let mut s = connector
        .connect(
            rustls::pki_types::ServerName::try_from(ANALYTICS_HOST).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let decision = h
        .trail()
        .into_iter()
        .find(|r| r["phase"] == "decision")
        .unwrap();
    assert_eq!(decision["action"]["name"], "websocket.open");
    // A prod person cannot open one either.
    let prod = raw.replace(ANALYTICS_HOST, PROD_HOST);
    assert!(h
        .raw(PROD_HOST, prod.as_bytes())
        .await
        .starts_with("HTTP/1.1 403"));
}

#[tokio::test]
async fn slow_upstreams_and_slow_inspected_bodies_time_out_without_forwarding_partials() {
    let h = Harness::with(
        FixtureOptions {
            server_extra: vec![
                "upstream_timeout_ms = 300".into(),
                "header_read_timeout_ms = 500".into(),
            ],
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let t = h.service();
    let r = h.get("/static/slow?ms=3000", &t).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("upstream.timeout"));

    let raw = format!("POST /api/2.0/sql/statements HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nContent-Length: 100\r\n\r\n{{\"statement\":");
    let answer = h.raw(ANALYTICS_HOST, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(!h.standin.saw_path("/api/2.0/sql/statements"));
}

#[tokio::test]
async fn a_plaintext_listener_serves_the_same_pipeline() {
    let h = Harness::with(
        FixtureOptions {
            tls: false,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let send = |raw: String| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
            .await
            .unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    };
    let t = h.service();
    let ok = send(format!("GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // Absolute-form without a Host line: routed on its authority, Host pinned upstream.
    let absolute = send(format!("GET http://{ANALYTICS_HOST}/api/2.1/clusters/list HTTP/1.1\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")).await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    let denied = send(format!("GET /api/2.0/dbfs/read?path=/x HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")).await;
    assert!(denied.starts_with("HTTP/1.1 403"));
    let conflict = send(format!("POST /api/2.0/dbfs/mkdirs HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n")).await;
    assert!(conflict.starts_with("HTTP/1.1 400"), "{conflict}");
    let seen: Vec<String> = h.standin.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(seen, vec!["/api/2.1/clusters/list"; 2]);
    let upstream = h.standin.url();
    for s in h.standin.seen() {
        assert_eq!(
            s.headers["host"].to_str().unwrap(),
            upstream.trim_start_matches("http://")
        );
    }
    let decision = &h
        .trail()
        .into_iter()
        .find(|r| r["phase"] == "decision")
        .unwrap();
    assert_eq!(decision["request"]["host"], ANALYTICS_HOST);
    // X-Forwarded-Proto tells the upstream the client spoke plain HTTP.
    assert_eq!(h.standin.seen()[0].headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn h2_requests_get_the_same_host_checks() {
    let h = Harness::start().await;
    let client = gatehouse::testing::local_client(&h.fixture.ca_cert, true).unwrap();
    // :authority names the lab, a host header names production.
    let req = http::Request::get(h.url(ANALYTICS_HOST, "/api/2.1/clusters/list"))
        .header("host", PROD_HOST)
        .header("authorization", format!("Bearer {}", h.service()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let status = client.request(req).await.map(|r| r.status());
    // Either the client refuses to send it or the gateway refuses it; never forwarded.
    if let Ok(s) = status {
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
    assert!(h.standin.seen().is_empty());
}

#[tokio::test]
async fn the_configuration_in_force_is_a_record_in_the_chain() {
    use sha2::Digest;
    let h = Harness::start().await;
    let text = std::fs::read(&h.fixture.config_path).unwrap();
    // Queued ahead of any request at start; written with the writer's next batch.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.trail().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no config record");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let trail = h.trail();
    let phases: Vec<&str> = trail
        .iter()
        .take(2)
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["start", "config"]);
    let config = &trail[1];
    assert_eq!(config["event"], "load");
    assert_eq!(config["outcome"], "applied");
    assert_eq!(config["sha256"], hex::encode(sha2::Sha256::digest(&text)));
    assert_eq!(config["gateway"], "gw-test");
    assert_eq!(config["prev"], trail[0]["hash"]);
    assert!(config["workspaces"]
        .as_array()
        .unwrap()
        .contains(&"prod-analytics".into()));
}

#[tokio::test]
async fn a_reload_swaps_the_rules_for_the_next_request_and_every_attempt_is_recorded() {
    use sha2::Digest;
    let h = Harness::start().await;
    let alice = h.alice();
    let path = &h.fixture.config_path;
    let original = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        h.get("/api/2.1/clusters/list", &alice).await.status,
        StatusCode::OK
    );

    // A slow request in flight when the rules change finishes on the rules it started with.
    let slow = {
        let alice = alice.clone();
        let ca = h.fixture.ca_cert.clone();
        let url = h.url(ANALYTICS_HOST, "/static/slow?ms=1500");
        tokio::spawn(async move {
            let client = gatehouse::testing::local_client(&ca, false).unwrap();
            let req = http::Request::get(url)
                .header("authorization", format!("Bearer {alice}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client.request(req).await.unwrap().status()
        })
    };
    while !h
        .standin
        .seen()
        .iter()
        .any(|r| r.path.starts_with("/static/slow"))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The data scientists' group is denied from now on.
    let outcome = h.deny_data_scientists_and_reload();
    let stricter = std::fs::read_to_string(path).unwrap();
    assert!(outcome.applied, "{outcome:?}");
    assert!(outcome.needs_restart.is_empty(), "{outcome:?}");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let r = h.get("/api/2.1/clusters/list", &alice).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["details"][0]["reason"], "principal.denied_group");

    // A broken file changes nothing and says why, naming each key.
    std::fs::write(path, format!("{stricter}\n[bogus]\nx = 1\n")).unwrap();
    let refused = h.running().reload();
    assert!(!refused.applied);
    assert!(
        refused.errors.iter().any(|e| e.contains("bogus")),
        "{refused:?}"
    );
    assert_eq!(
        h.get("/api/2.1/clusters/list", &alice).await.status,
        StatusCode::FORBIDDEN
    );

    // Listeners are bound at start: a new address is named as needing a restart.
    let moved = original.replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"127.0.0.1:1\"");
    assert_ne!(moved, original);
    std::fs::write(path, &moved).unwrap();
    let back = h.running().reload();
    assert!(
        back.applied && back.needs_restart == ["server.listen"],
        "{back:?}"
    );
    assert_eq!(
        h.get("/api/2.1/clusters/list", &alice).await.status,
        StatusCode::OK
    );

    let reloads: Vec<serde_json::Value> = h
        .trail()
        .into_iter()
        .filter(|r| r["phase"] == "config" && r["event"] == "reload")
        .collect();
    assert_eq!(reloads.len(), 3);
    assert_eq!(reloads[0]["outcome"], "applied");
    assert_eq!(
        reloads[0]["sha256"],
        hex::encode(sha2::Sha256::digest(stricter.as_bytes()))
    );
    assert_eq!(reloads[1]["outcome"], "refused");
    assert!(reloads[1]["errors"][0].as_str().unwrap().contains("bogus"));
    // A refused reload records the configuration that stays in force.
    assert_eq!(reloads[1]["sha256"], reloads[0]["sha256"]);
    assert_eq!(reloads[2]["needs_restart"][0], "server.listen");
}

#[tokio::test]
async fn operators_reload_through_the_admin_api_and_others_are_refused() {
    async fn reload(h: &Harness, token: Option<String>) -> (StatusCode, serde_json::Value) {
        let (status, body) = h
            .admin(Method::POST, "/v1/reload", token.as_deref(), None)
            .await;
        (status, serde_json::from_slice(&body).unwrap())
    }
    let h = Harness::with(
        FixtureOptions {
            extra_toml: "[admin]\noperator_groups = [\"gatehouse-operators\"]\n".into(),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let operator = h.token("ops@bank.example", "user", &["gatehouse-operators"]);
    let (status, body) = reload(&h, Some(h.alice())).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (StatusCode::FORBIDDEN, Some("NOT_AN_OPERATOR"))
    );
    let (status, _) = reload(&h, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = reload(&h, Some(operator.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"], true);
    let path = &h.fixture.config_path;
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{text}\n[bogus]\n")).unwrap();
    let (status, body) = reload(&h, Some(operator)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("bogus"),
        "{body}"
    );

    // Reload records are queued, not awaited: wait (bounded) for the writer.
    let reloads = || -> Vec<serde_json::Value> {
        h.trail()
            .into_iter()
            .filter(|r| r["phase"] == "config" && r["event"] == "reload")
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reloads().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no reload records");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reloads = reloads();
    assert_eq!(reloads.len(), 2);
    assert!(reloads.iter().all(|r| r["by"] == "ops@bank.example"));
    assert_eq!(reloads[1]["outcome"], "refused");
}

/// `[limits]`: a principal over its rate gets 429 with Retry-After in its client's error
/// shape, recorded and never forwarded; other principals are not affected.
#[tokio::test]
async fn principals_over_their_rate_get_429_with_retry_after() {
    let h = Harness::with(
        FixtureOptions {
            extra_toml: "[limits]\nper_principal_rps = 1\nburst = 3\n".into(),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let sp = h.service();
    // The burst of 3 passes; soon after, a request is refused. (A slow machine may refill a
    // token between requests, so the refusal is looked for, not timed.)
    let mut allowed = 0;
    let (r, forwarded) = loop {
        let forwarded = h.standin.seen().len();
        let r = h.get("/api/2.1/clusters/list", &sp).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break (r, forwarded);
        }
        assert_eq!(r.status, StatusCode::OK);
        allowed += 1;
        assert!(
            allowed <= 8,
            "no 429 after {allowed} requests at 1 per second"
        );
    };
    assert!(allowed >= 3, "the burst of 3 was not honoured: {allowed}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        retry, 1,
        "one request per second: the next is due within a second"
    );
    assert_eq!(r.json()["error_code"], "REQUEST_LIMIT_EXCEEDED");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("limits.rate"));
    assert_eq!(h.standin.seen().len(), forwarded);
    let rid = r.headers["x-request-id"].to_str().unwrap();
    let records = h.records_for(rid);
    assert_eq!(records[0]["decision"]["effect"], "deny");
    assert_eq!(records[0]["decision"]["rule"], "limits.rate");
    assert_eq!(records[0]["principal"]["id"], "sp-aiml-prod");
    assert_eq!(h.completion_for(rid).await["status"], 429);

    // Someone else has their own bucket.
    let r = h.get("/api/2.1/clusters/list", &h.alice()).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// `[limits] max_connections`: beyond the cap, a new connection is closed at once; when one
/// closes, a new one is served again.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let h = Harness::with(
        FixtureOptions {
            tls: false,
            extra_toml: "[limits]\nmax_connections = 2\n".into(),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let addr = ("127.0.0.1", h.port);
    let request = format!(
        "GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        gatehouse::testing::ANALYTICS_HOST,
        h.service()
    );
    // Two connections, each served once and kept open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(c);
    }
    // The third is closed without an answer.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut out)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection was served: {:?}",
        String::from_utf8_lossy(&out)
    );
    // One closes; the next connection is served.
    drop(open.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(request.as_bytes()).await;
        let mut buf = [0u8; 12];
        if c.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200" {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no slot was freed after a connection closed");
}

/// The value of one sample in a Prometheus text exposition, by its exact series text.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /metrics` on the admin listener counts what the data path did, by workspace, category,
/// decision and rule, with latencies, upstream errors, connections, the trail, the token
/// cache, the keys, exceptions and reloads.
#[tokio::test]
async fn metrics_count_what_the_gateway_did() {
    let h = Harness::with(
        FixtureOptions {
            server_extra: vec!["upstream_timeout_ms = 300".into()],
            report_only: vec!["api.unknown".into()],
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let sp = h.service();
    for _ in 0..3 {
        assert_eq!(
            h.get("/api/2.1/clusters/list", &sp).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        h.get("/api/2.0/dbfs/read?path=/x", &sp).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.get("/api/2.0/brand-new/list", &sp).await.status,
        StatusCode::OK
    );
    let r = h
        .send(
            false,
            Method::GET,
            ANALYTICS_HOST,
            "/api/2.1/clusters/list",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h.get("/static/slow?ms=2000", &sp).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(h.running().reload().applied);

    // Completions are counted when their records are handed over; wait for the last one.
    let mut text = String::new();
    for _ in 0..200 {
        let (status, body) = h.admin(Method::GET, "/metrics", None, None).await;
        assert_eq!(status, StatusCode::OK);
        text = String::from_utf8(body.to_vec()).unwrap();
        if sample(&text, "gatehouse_request_duration_seconds_count") >= Some(7.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = |category: &str, decision: &str, rule: &str| {
        sample(
            &text,
            &format!("gatehouse_requests_total{{workspace=\"prod-analytics\",category=\"{category}\",decision=\"{decision}\",rule=\"{rule}\"}}"),
        )
    };
    assert_eq!(
        requests("metadata", "allow", "default.allow"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        requests("download", "deny", "downloads.blocked"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("other", "report_only", "api.unknown"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("metadata", "deny", "identity.missing_token"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gatehouse_request_duration_seconds_count"),
        Some(7.0)
    );
    // Answered by the upstream: 3 lists and the report-only one (the slow one timed out).
    assert_eq!(
        sample(&text, "gatehouse_upstream_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "gatehouse_upstream_errors_total{kind=\"timeout\"}"),
        Some(1.0)
    );
    let total = sample(&text, "gatehouse_connections_total").unwrap();
    assert!(total >= 7.0, "{text}");
    assert!(sample(&text, "gatehouse_open_connections").is_some_and(|open| open <= total));
    assert!(
        sample(&text, "gatehouse_token_cache_hits_total") >= Some(5.0),
        "{text}"
    );
    assert!(
        sample(&text, "gatehouse_token_cache_misses_total") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "gatehouse_audit_queue_depth").is_some(),
        "{text}"
    );
    assert_eq!(sample(&text, "gatehouse_audit_healthy"), Some(1.0));
    assert!(
        sample(&text, "gatehouse_audit_fsync_seconds_count") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "gatehouse_jwks_age_seconds").is_some(),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gatehouse_jwks_refresh_failures_total"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "gatehouse_live_exceptions"), Some(0.0));
    assert_eq!(
        sample(&text, "gatehouse_config_reloads_total{outcome=\"applied\"}"),
        Some(1.0)
    );
    // Nothing secret or personal is a label.
    assert!(!text.contains(&sp) && !text.contains("sp-aiml-prod"));
}

/// A reload does not cut an open HTTP/2 connection: the stream in flight finishes on the
/// configuration it started with, the connection is told to go away (GOAWAY), and the
/// client's next request, on a new connection, is decided by the new configuration.
#[tokio::test]
async fn an_open_h2_connection_finishes_on_its_configuration_and_the_next_request_gets_the_new_one()
{
    let h = Harness::start().await;
    let alice = h.alice();
    let client = gatehouse::testing::local_client(&h.fixture.ca_cert, true).unwrap();
    let get = |path: &str| {
        http::Request::get(h.url(ANALYTICS_HOST, path))
            .header("authorization", format!("Bearer {alice}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let first = client.request(get("/api/2.1/clusters/list")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.version(), http::Version::HTTP_2);
    let slow = tokio::spawn(client.request(get("/static/slow?ms=1500")));
    while !h
        .standin
        .seen()
        .iter()
        .any(|r| r.path.starts_with("/static/slow"))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.deny_data_scientists_and_reload().applied);

    let slow = slow
        .await
        .unwrap()
        .expect("the stream in flight was not cut");
    assert_eq!(slow.status(), StatusCode::OK);
    let next = client.request(get("/api/2.1/clusters/list")).await.unwrap();
    assert_eq!(next.status(), StatusCode::FORBIDDEN);
}

/// A GET that carries a chunked body is refused before anything goes upstream: the decision
/// is made on the URL alone, and such a request must never share a pipelined upstream
/// connection as if it were bodiless.
#[tokio::test]
async fn a_get_with_a_chunked_body_is_refused_and_never_forwarded() {
    let h = Harness::start().await;
    let request = format!(
        "GET /api/2.1/clusters/list HTTP/1.1\r\nHost: {ANALYTICS_HOST}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        h.service()
    );
    let answer = h.raw(ANALYTICS_HOST, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request.malformed"), "{answer}");
    assert!(h.standin.seen().is_empty());
}
