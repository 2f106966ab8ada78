//! The S3 side of the harness: a gateway with `[s3]` and buckets in front of the stand-in,
//! and raw SigV4-shaped requests (the stand-in does not check signatures).

use super::Harness;
use gatehouse::testing::FixtureOptions;

pub const LAB_KEY: &str = "AKIALABEXAMPLE00001";
pub const PROD_KEY: &str = "AKIAPRODEXAMPLE0001";

pub fn s3_options(upstream_placeholder: &str, extra: &str) -> FixtureOptions {
    FixtureOptions {
        tls: false,
        analytics_aliases: vec![],
        extra_toml: format!(
            r#"
[s3]
hosts = ["localhost", "127.0.0.1", "*.s3.test"]
upstream = "{upstream_placeholder}"

[[s3.access_point]]
host = "rawap-123456789012.s3-accesspoint.us-east-1.amazonaws.com"
bucket = "buk-raw-landing"

[[s3.access_key]]
id = "{LAB_KEY}"
principal = "sp-aiml-lab"
principal_type = "service_principal"
workspace = "prod-analytics"

[[s3.access_key]]
id = "{PROD_KEY}"
principal = "sp-aiml-prod"
principal_type = "service_principal"
workspace = "prod"

[[bucket]]
name = "buk-aiml-lab"
class = "lab"
workspaces = ["prod-analytics"]
retention_days = 90

[[bucket]]
name = "buk-raw-landing"
class = "raw"

[[bucket]]
name = "buk-aiml-prod-output"
class = "prod-output"
readers = ["sp-edp-sync"]
{extra}"#
        ),
        ..Default::default()
    }
}

/// The harness with S3 configured to forward to its own stand-in.
pub async fn s3_harness() -> Harness {
    s3_harness_with("").await
}

/// The S3 harness with more configuration appended (`[exceptions]`, …).
pub async fn s3_harness_with(extra: &str) -> Harness {
    s3_harness_from(|standin| s3_options(standin, extra), |_| {}).await
}

/// A harness whose configuration needs the stand-in's address (only known once it runs):
/// start, then start again on the configuration `options` builds from that address, after
/// `prepare` has seen the trail directory.
pub async fn s3_harness_from(
    options: impl FnOnce(&str) -> FixtureOptions,
    prepare: impl FnOnce(&std::path::Path),
) -> Harness {
    let mut h = Harness::with(
        FixtureOptions {
            tls: false,
            analytics_aliases: vec![],
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let running = h.running.take().unwrap();
    running.shutdown().await;
    let dir = h.fixture.dir.join("s3");
    h.fixture =
        gatehouse::testing::Fixture::create(&dir, &h.standin.url(), &options(&h.standin.url()))
            .unwrap();
    prepare(&h.fixture.audit_dir);
    let running = gatehouse::proxy::server::start(&h.fixture.config)
        .await
        .unwrap();
    h.port = running.data_addr.port();
    h.running = Some(running);
    h
}

pub fn sigv4(key: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential={key}/20261127/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-meta-my_field, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
}

pub async fn send(h: &Harness, raw: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut out),
    )
    .await;
    out
}

pub fn request(
    h: &Harness,
    method: &str,
    target: &str,
    key: &str,
    extra: &str,
    body: &str,
) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: {auth}\r\nx-amz-date: 20261127T090000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        port = h.port,
        auth = sigv4(key),
        len = body.len()
    )
}
