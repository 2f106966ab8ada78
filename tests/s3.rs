//! The S3 side through the real gateway: pass-through fidelity (what a SigV4 signature
//! covers reaches the upstream unchanged), attribution, bucket rules, S3-shaped denials and
//! the trail. The stand-in upstream records what reached it.

mod common;

use common::s3::{
    request, s3_harness, s3_harness_from, s3_options, send, sigv4, LAB_KEY, PROD_KEY,
};

/// Sends `raw` and asserts the gateway's own S3 denial: 403 `AccessDenied` naming `rule`, with
/// a request id.
async fn assert_denied(h: &common::Harness, raw: &str, rule: &str) {
    let answer = send(h, raw.to_owned()).await;
    let line = raw.lines().next().unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 403"), "{line}\n=> {answer}");
    assert!(
        answer.contains("<Code>AccessDenied</Code>"),
        "{line}\n=> {answer}"
    );
    assert!(
        answer.contains(&format!("(rule {rule})")),
        "{rule} for {line}\n=> {answer}"
    );
    assert!(answer.contains("<RequestId>"), "{answer}");
}

/// Asserts the stand-in upstream received nothing.
fn assert_nothing_upstream(h: &common::Harness) {
    let seen = h.standin.seen();
    assert!(
        seen.is_empty(),
        "{:?}",
        seen.iter()
            .map(|s| format!("{} {} {:?}", s.method, s.path, s.query))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn what_the_signature_covers_reaches_the_upstream_unchanged() {
    let h = s3_harness().await;
    let target = "/buk-aiml-lab/dir//a%20b+c%2Fd.txt?x-id=PutObject";
    let raw = request(&h, "PUT", target, LAB_KEY, "x-amz-meta-my_field: Value With Spaces\r\nContent-Encoding: aws-chunked\r\nx-amz-decoded-content-length: 5\r\n", "hello");
    let answer = send(&h, raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.standin.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.path, "/buk-aiml-lab/dir//a%20b+c%2Fd.txt",
        "raw path bytes kept"
    );
    assert_eq!(s.query.as_deref(), Some("x-id=PutObject"));
    assert_eq!(
        s.headers["host"],
        format!("localhost:{}", h.port).as_str(),
        "the client's Host is kept"
    );
    assert_eq!(s.headers["x-amz-meta-my_field"], "Value With Spaces");
    assert_eq!(s.headers["authorization"], sigv4(LAB_KEY).as_str());
    assert_eq!(s.headers["content-encoding"], "aws-chunked");
    assert_eq!(s.headers["x-amz-decoded-content-length"], "5");
    assert_eq!(s.body_len, 5);

    let decision = h
        .trail()
        .into_iter()
        .find(|r| r["phase"] == "decision")
        .unwrap();
    assert_eq!(decision["action"]["name"], "PutObject");
    assert_eq!(decision["asset"]["kind"], "s3");
    assert_eq!(decision["asset"]["bucket"], "buk-aiml-lab");
    assert_eq!(decision["asset"]["key"], "dir//a b+c/d.txt");
    assert_eq!(decision["credential"]["access_key"], LAB_KEY);
    assert_eq!(decision["credential"]["scheme"], "sigv4");
    assert_eq!(decision["principal"]["id"], "sp-aiml-lab");
    assert_eq!(decision["workspace"], "prod-analytics");
    let text = gatehouse::testing::trail_text(&h.fixture.audit_dir);
    assert!(
        !text.contains("0123456789abcdef0123456789abcdef"),
        "no signature in the trail"
    );
}

#[tokio::test]
async fn bucket_rules_deny_in_s3_shape_and_nothing_reaches_the_upstream() {
    let h = s3_harness().await;
    let lifecycle_365 = "<LifecycleConfiguration><Rule><ID>a</ID><Filter/><Status>Enabled</Status><Expiration><Days>365</Days></Expiration></Rule></LifecycleConfiguration>";
    let cases: Vec<(String, &str)> = vec![
        (
            request(
                &h,
                "GET",
                "/buk-raw-landing/2026/customers.csv",
                LAB_KEY,
                "",
                "",
            ),
            "buckets.raw_blocked",
        ),
        (
            request(&h, "GET", "/buk-raw-landing?list-type=2", LAB_KEY, "", ""),
            "buckets.raw_blocked",
        ),
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-lab/copy.csv",
                LAB_KEY,
                "x-amz-copy-source: /buk-raw-landing/2026/customers.csv?versionId=3\r\n",
                "",
            ),
            "buckets.raw_blocked",
        ),
        (
            request(&h, "GET", "/buk-nobody/x", LAB_KEY, "", ""),
            "buckets.unknown",
        ),
        (
            request(&h, "DELETE", "/buk-aiml-lab?lifecycle", LAB_KEY, "", ""),
            "buckets.lab_retention",
        ),
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-lab?lifecycle",
                LAB_KEY,
                "",
                lifecycle_365,
            ),
            "buckets.lab_retention",
        ),
        (
            request(&h, "PUT", "/buk-aiml-lab?policy", LAB_KEY, "", "{}"),
            "buckets.public_grant",
        ),
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-lab?cors",
                LAB_KEY,
                "",
                "<CORSConfiguration/>",
            ),
            "buckets.lab_governance",
        ),
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-prod-output/scores.parquet",
                LAB_KEY,
                "",
                "x",
            ),
            "buckets.prod_output_writer",
        ),
        (
            request(&h, "GET", "/buk-aiml-lab/x", "AKIAUNKNOWNKEY00001", "", ""),
            "identity.s3_unknown_key",
        ),
    ];
    for (raw, rule) in cases {
        assert_denied(&h, &raw, rule).await;
    }
    // Presigned reads of the raw bucket, both signature versions.
    for query in [
        format!("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={LAB_KEY}%2F20261127%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261127T090000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abcdef"),
        format!("AWSAccessKeyId={LAB_KEY}&Signature=abc%3D&Expires=1800000000"),
    ] {
        let raw = format!("GET /buk-raw-landing/2026/customers.csv?{query} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n", h.port);
        let answer = send(&h, raw).await;
        assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("buckets.raw_blocked"), "{answer}");
    }
    assert_nothing_upstream(&h);
    let text = gatehouse::testing::trail_text(&h.fixture.audit_dir);
    assert!(!text.contains("X-Amz-Signature=abcdef") && !text.contains("abc%3D"));
}

#[tokio::test]
async fn allowed_bucket_operations_are_forwarded() {
    let h = s3_harness().await;
    let lifecycle_30 = "<LifecycleConfiguration><Rule><ID>a</ID><Filter/><Status>Enabled</Status><Expiration><Days>30</Days></Expiration><NoncurrentVersionExpiration><NoncurrentDays>30</NoncurrentDays></NoncurrentVersionExpiration></Rule></LifecycleConfiguration>";
    for (raw, path) in [
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-lab?lifecycle",
                LAB_KEY,
                "",
                lifecycle_30,
            ),
            "/buk-aiml-lab",
        ),
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-prod-output/scores.parquet",
                PROD_KEY,
                "",
                "x",
            ),
            "/buk-aiml-prod-output/scores.parquet",
        ),
        (
            request(
                &h,
                "PUT",
                "/buk-aiml-lab/copy.csv",
                LAB_KEY,
                "x-amz-copy-source: buk-aiml-lab/orig.csv\r\n",
                "",
            ),
            "/buk-aiml-lab/copy.csv",
        ),
        (request(&h, "GET", "/", LAB_KEY, "", ""), "/"),
    ] {
        let before = h.standin.seen().len();
        let answer = send(&h, raw.clone()).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}\n=> {answer}",
            raw.lines().next().unwrap()
        );
        let seen = h.standin.seen();
        assert_eq!(seen.len(), before + 1);
        assert_eq!(seen.last().unwrap().path, path);
    }
    // The inspected lifecycle body reached the upstream intact.
    assert_eq!(h.standin.seen()[0].body_len, lifecycle_30.len());
}

#[tokio::test]
async fn the_upstreams_verdict_on_the_signature_is_recorded() {
    let h = s3_harness().await;
    let answer = send(
        &h,
        request(
            &h,
            "GET",
            "/buk-aiml-lab/x?standin-error=SignatureDoesNotMatch",
            LAB_KEY,
            "",
            "",
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("<Code>SignatureDoesNotMatch</Code>"),
        "the upstream's error is passed on"
    );
    let mut completion = None;
    for _ in 0..100 {
        completion = h.trail().into_iter().find(|r| r["phase"] == "completion");
        if completion.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let completion = completion.expect("completion record");
    assert_eq!(completion["upstream_error"], "SignatureDoesNotMatch");
    assert_eq!(completion["status"], 403);
}

#[tokio::test]
async fn virtual_hosted_requests_name_their_bucket_in_the_host() {
    let h = s3_harness().await;
    let raw = format!(
        "GET /2026/customers.csv HTTP/1.1\r\nHost: buk-raw-landing.s3.test:{}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        h.port,
        sigv4(LAB_KEY)
    );
    let answer = send(&h, raw).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("buckets.raw_blocked"),
        "{answer}"
    );
    assert!(h.standin.seen().is_empty());
}

#[tokio::test]
async fn access_points_are_routed_only_when_mapped() {
    let h = s3_harness().await;
    let get = |host: &str| {
        format!(
            "GET /2026/customers.csv HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            sigv4(LAB_KEY)
        )
    };
    // Mapped to the raw bucket: its rules apply.
    let answer = send(
        &h,
        get("rawap-123456789012.s3-accesspoint.us-east-1.amazonaws.com"),
    )
    .await;
    assert!(answer.contains("buckets.raw_blocked"), "{answer}");
    // Under a configured suffix but not mapped: denied, never guessed.
    let answer = send(&h, get("otherap-123456789012.s3-accesspoint.s3.test")).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("buckets.unknown"),
        "{answer}"
    );
    assert!(h.standin.seen().is_empty());
}

/// `Expect: 100-continue`: the client's body is held back until the upstream asks for it, so
/// an upstream that rejects from the headers (a bad signature) is what the client hears.
#[tokio::test]
async fn expect_continue_waits_for_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = s3_harness().await;
    let head = |target: &str| {
        format!(
            "PUT {target} HTTP/1.1\r\nHost: localhost:{}\r\nAuthorization: {}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            h.port,
            sigv4(LAB_KEY)
        )
    };
    // Rejected from the headers: the client gets the 403, never a 100.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    s.write_all(head("/buk-aiml-lab/x?standin-error=SignatureDoesNotMatch").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.starts_with("HTTP/1.1 403"), "{first}");
    assert!(first.contains("SignatureDoesNotMatch"));

    // Accepted: the upstream's go-ahead reaches the client, then the body goes through.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    s.write_all(head("/buk-aiml-lab/y").as_bytes())
        .await
        .unwrap();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.starts_with("HTTP/1.1 100"), "{first}");
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut chunk = vec![0u8; 4096];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            rest.push_str(&String::from_utf8_lossy(&chunk[..n]));
            if rest.contains("received_bytes") {
                break;
            }
        }
    })
    .await;
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("\"received_bytes\":5"), "{rest}");
}

/// A key of the `compute` workspace, whose network is loopback (where the tests' requests come
/// from), and one of `remote`, whose network is elsewhere; both may use `buk-compute-lab`.
const COMPUTE_KEY: &str = "AKIACOMPUTEEXAMPLE01";
const REMOTE_KEY: &str = "AKIAREMOTEEXAMPLE001";

async fn networks_harness() -> common::Harness {
    s3_harness_from(
        |standin| {
            s3_options(
                standin,
                &format!(
                    r#"
[[bucket]]
name = "buk-compute-lab"
class = "lab"
workspaces = ["compute", "remote"]
retention_days = 30

[[workspace]]
name = "compute"
hosts = ["compute.dbx.test"]
upstream = "{standin}"
humans = "deny"
source_cidrs = ["127.0.0.0/8"]

[[workspace]]
name = "remote"
hosts = ["remote.dbx.test"]
upstream = "{standin}"
humans = "deny"
source_cidrs = ["192.0.2.0/24"]

[[s3.access_key]]
id = "{COMPUTE_KEY}"
principal = "sp-compute"
principal_type = "service_principal"
workspace = "compute"

[[s3.access_key]]
id = "{REMOTE_KEY}"
principal = "sp-remote"
principal_type = "service_principal"
workspace = "remote"
"#
                ),
            )
        },
        |_| {},
    )
    .await
}

/// Attribution from the client's side of the socket (loopback, inside `compute`'s network):
/// a mapped key only from its workspace's networks, an unmapped key only when it is a
/// temporary credential. Refusals are S3's XML, recorded, and reach nothing upstream.
#[tokio::test]
async fn attribution_holds_keys_to_their_networks_and_networks_to_temporary_credentials() {
    let h = networks_harness().await;
    let get = |key: &str, extra: &str| request(&h, "GET", "/buk-compute-lab/x", key, extra, "");
    let token = "x-amz-security-token: FwoGZXIvYXdzEXAMPLETOKEN\r\n";
    let refused = [
        // Reading the lab bucket with the remote workspace's key from here is a download.
        (get(REMOTE_KEY, ""), "identity.s3_wrong_network"),
        // An unmapped long-term key on the compute's network is someone's own key.
        (get("AKIAUNKNOWNEXAMPLE01", ""), "identity.s3_unknown_key"),
        (get("AKIAUNKNOWNEXAMPLE01", token), "identity.s3_unknown_key"),
        (get("ASIAUNKNOWNEXAMPLE01", ""), "identity.s3_unknown_key"),
        (
            format!("GET /buk-compute-lab/x?AWSAccessKeyId=AKIAUNKNOWNEXAMPLE01&Signature=abc%3D&Expires=1800000000 HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n", h.port),
            "identity.s3_unknown_key",
        ),
        // No credential: nothing to attribute by network either.
        (
            format!("GET /buk-compute-lab/x HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n", h.port),
            "identity.s3_unknown_caller",
        ),
    ];
    for (raw, rule) in &refused {
        assert_denied(&h, raw, rule).await;
    }
    assert_nothing_upstream(&h);
    let trail = h.trail();
    let denied: Vec<&str> = trail
        .iter()
        .filter(|r| r["phase"] == "decision" && r["decision"]["effect"] == "deny")
        .filter_map(|r| r["decision"]["rule"].as_str())
        .collect();
    let wanted: Vec<&str> = refused.iter().map(|(_, rule)| *rule).collect();
    assert_eq!(denied, wanted, "each refusal is recorded");
    let wrong = trail
        .iter()
        .find(|r| r["decision"]["rule"] == "identity.s3_wrong_network")
        .unwrap();
    assert_eq!(wrong["credential"]["access_key"], REMOTE_KEY);
    assert_eq!(wrong["asset"]["bucket"], "buk-compute-lab");

    // Let through: the compute's own key, and its temporary credentials by network.
    for (key, extra, principal) in [
        (COMPUTE_KEY, "", "sp-compute"),
        ("ASIAUNKNOWNEXAMPLE01", token, "compute:compute"),
    ] {
        let before = h.standin.seen().len();
        let answer = send(&h, get(key, extra)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{key}: {answer}");
        assert_eq!(h.standin.seen().len(), before + 1);
        let allowed = h
            .trail()
            .into_iter()
            .rfind(|r| r["phase"] == "decision" && r["decision"]["effect"] == "allow")
            .unwrap();
        assert_eq!(allowed["principal"]["id"], principal);
        assert_eq!(allowed["workspace"], "compute");
    }
}

/// The lab bucket's retention: a lifecycle must expire every object and every noncurrent
/// version within it, read the way S3 reads it; nothing may lock objects against deletion.
/// Each refusal is S3's XML, recorded, and nothing reaches the upstream.
#[tokio::test]
async fn the_lab_retention_holds_against_partial_lifecycles_hostile_xml_and_object_lock() {
    let h = s3_harness().await;
    let lifecycle = |rules: &str| {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{rules}</LifecycleConfiguration>"#
        )
    };
    let rule = |filter: &str, days: &str| {
        format!("<Rule><ID>r</ID>{filter}<Status>Enabled</Status><Expiration><Days>{days}</Days></Expiration><NoncurrentVersionExpiration><NoncurrentDays>30</NoncurrentDays></NoncurrentVersionExpiration></Rule>")
    };
    let all = "<Filter><Prefix></Prefix></Filter>";
    let put_lifecycle =
        |body: String| request(&h, "PUT", "/buk-aiml-lab?lifecycle", LAB_KEY, "", &body);
    let put = |target: &str, headers: &str| request(&h, "PUT", target, LAB_KEY, headers, "x");
    let denied = [
        // Only part of the bucket expires.
        put_lifecycle(lifecycle(&rule("<Filter><Prefix>tmp/</Prefix></Filter>", "30"))),
        // Current objects expire, overwritten and deleted versions are kept.
        put_lifecycle(lifecycle("<Rule><ID>r</ID><Filter/><Status>Enabled</Status><Expiration><Days>30</Days></Expiration></Rule>")),
        // 365 to S3, 5 to a reader that keeps the last piece of the text.
        put_lifecycle(lifecycle(&rule(all, "36<!-- -->5"))),
        put_lifecycle(lifecycle(&rule(all, "<![CDATA[30]]>"))),
        put_lifecycle(lifecycle(&rule(all, "30</Days><Days>3650"))),
        put_lifecycle(lifecycle(&rule("<Filter><And></And></Filter>", "30"))),
        put_lifecycle(lifecycle(&rule(all, "0"))),
        put_lifecycle(lifecycle(&rule(all, "30")).replace("Enabled", "Disabled")),
        // Object Lock: the bucket default, an object's retention or legal hold, and writes
        // that set a lock on what they create.
        request(&h, "PUT", "/buk-aiml-lab?object-lock", LAB_KEY, "", "<ObjectLockConfiguration/>"),
        request(&h, "PUT", "/buk-aiml-lab/x?retention", LAB_KEY, "", "<Retention/>"),
        request(&h, "PUT", "/buk-aiml-lab/x?legal-hold", LAB_KEY, "", "<LegalHold/>"),
        put("/buk-aiml-lab/x", "x-amz-object-lock-mode: COMPLIANCE\r\nx-amz-object-lock-retain-until-date: 2099-01-01T00:00:00Z\r\n"),
        put("/buk-aiml-lab/x", "x-amz-object-lock-legal-hold: ON\r\n"),
        put("/buk-aiml-lab/x", "x-amz-copy-source: buk-aiml-lab/y\r\nx-amz-object-lock-mode: GOVERNANCE\r\n"),
        request(&h, "POST", "/buk-aiml-lab/x?uploads", LAB_KEY, "x-amz-object-lock-mode: COMPLIANCE\r\n", ""),
    ];
    for raw in &denied {
        assert_denied(&h, raw, "buckets.lab_retention").await;
    }
    // Creating the lab bucket is the platform's, and with Object Lock on it is a lock.
    let create = request(
        &h,
        "PUT",
        "/buk-aiml-lab",
        LAB_KEY,
        "x-amz-bucket-object-lock-enabled: true\r\n",
        "",
    );
    assert_denied(&h, &create, "buckets.lab_retention").await;
    assert_nothing_upstream(&h);
    let recorded = h
        .trail()
        .into_iter()
        .filter(|r| r["phase"] == "decision" && r["decision"]["effect"] == "deny")
        .count();
    assert_eq!(recorded, denied.len() + 1, "every refusal is recorded");

    // What covers the whole bucket, with filtered rules beside it, goes through unchanged.
    let body = lifecycle(&format!(
        "{}{}",
        rule(all, "30"),
        rule("<Filter><Prefix>keep/</Prefix></Filter>", "3650")
    ));
    let answer = send(&h, put_lifecycle(body.clone())).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.standin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, body.len());
}

/// Sends one request over h2 with prior knowledge (plain TCP): only `:authority`, no Host
/// header. Returns the status and body.
async fn send_h2(h: &common::Harness, method: &str, uri: &str, key: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", sigv4(key))
        .header("x-amz-date", "20261127T090000Z")
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(req.headers().get("host").is_none());
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Issue 15.1: a request that names its authority only as h2's `:authority` or an HTTP/1.1
/// absolute-form target was decided on that authority but forwarded without Host, so the
/// HTTP client filled in the upstream's own and S3 read a virtual-hosted request path-style:
/// decided "lab bucket, key buk-raw-landing/…", executed on the raw bucket. The upstream must
/// see exactly the authority the gateway decided on.
#[tokio::test]
async fn the_upstream_sees_the_host_the_request_was_decided_on() {
    let h = s3_harness().await;
    let port = h.port;
    let lab = format!("buk-aiml-lab.s3.test:{port}");
    let path_style = format!("localhost:{port}");
    let raw_ap = "rawap-123456789012.s3-accesspoint.us-east-1.amazonaws.com";

    // The exploit, over h2: the lab bucket's virtual-hosted name with the raw bucket in the
    // path. Decided as the lab bucket; the upstream must also read it as the lab bucket.
    let exploit = format!("http://{lab}/buk-raw-landing/2026/customers.csv");
    let (status, body) = send_h2(&h, "GET", &exploit, LAB_KEY).await;
    assert_eq!(status, 200, "{body}");
    // Path-style over h2, and absolute-form without Host over HTTP/1.1, in each host form.
    let (status, body) = send_h2(
        &h,
        "GET",
        &format!("http://{path_style}/buk-aiml-lab/a.csv"),
        LAB_KEY,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (authority, path) in [
        (lab.as_str(), "/buk-raw-landing/2026/customers.csv"),
        (path_style.as_str(), "/buk-aiml-lab/b.csv"),
    ] {
        let raw = format!(
            "GET http://{authority}{path} HTTP/1.1\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            sigv4(LAB_KEY)
        );
        let answer = send(&h, raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seen: Vec<(String, String)> = h
        .standin
        .seen()
        .iter()
        .map(|s| {
            (
                s.headers["host"].to_str().unwrap().to_owned(),
                s.path.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (lab.clone(), "/buk-raw-landing/2026/customers.csv".into()),
            (path_style.clone(), "/buk-aiml-lab/a.csv".into()),
            (lab.clone(), "/buk-raw-landing/2026/customers.csv".into()),
            (path_style.clone(), "/buk-aiml-lab/b.csv".into()),
        ],
        "the upstream reads every request under the authority it was decided on"
    );
    let decisions: Vec<_> = h
        .trail()
        .into_iter()
        .filter(|r| r["phase"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 4);
    for d in &decisions {
        assert_eq!(d["asset"]["bucket"], "buk-aiml-lab", "{d}");
        assert_eq!(d["decision"]["effect"], "allow", "{d}");
    }
    assert_eq!(
        decisions[0]["asset"]["key"],
        "buk-raw-landing/2026/customers.csv"
    );
    assert_eq!(decisions[0]["request"]["host"], lab.as_str());

    // The access-point form, over h2 and absolute-form: decided on the raw bucket (denied
    // for the lab key, never forwarded) — and with a write exception-free prod key too.
    let (status, body) = send_h2(
        &h,
        "GET",
        &format!("http://{raw_ap}/2026/customers.csv"),
        LAB_KEY,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("buckets.raw_blocked"), "{body}");
    let raw = format!(
        "GET http://{raw_ap}/2026/customers.csv HTTP/1.1\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        sigv4(LAB_KEY)
    );
    let answer = send(&h, raw).await;
    assert!(answer.contains("buckets.raw_blocked"), "{answer}");
    assert_eq!(
        h.standin.seen().len(),
        4,
        "nothing more reached the upstream"
    );

    // Neither Host nor an absolute-form authority: refused before anything is decided.
    let raw = format!(
        "GET /buk-aiml-lab/a.csv HTTP/1.1\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        sigv4(LAB_KEY)
    );
    let answer = send(&h, raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request.malformed"), "{answer}");
    // A Host that names another host than the absolute-form target: refused, as before.
    let raw = format!(
        "GET http://{lab}/a.csv HTTP/1.1\r\nHost: buk-raw-landing.s3.test:{port}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        sigv4(LAB_KEY)
    );
    let answer = send(&h, raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(h.standin.seen().len(), 4);
}

/// Issue 15.4: a public or foreign grant would make lab objects readable by anyone straight
/// from S3. Refused in S3's shape, recorded, never forwarded; an owner-only ACL passes.
#[tokio::test]
async fn public_and_foreign_grants_never_reach_the_upstream() {
    let h = s3_harness().await;
    let all_users = "x-amz-grant-read: uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"\r\n";
    let acl_body = "<AccessControlPolicy><Owner><ID>o</ID></Owner><AccessControlList><Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>";
    for raw in [
        request(
            &h,
            "PUT",
            "/buk-aiml-lab/a.csv",
            LAB_KEY,
            "x-amz-acl: public-read\r\n",
            "x",
        ),
        request(&h, "PUT", "/buk-aiml-lab/a.csv", LAB_KEY, all_users, "x"),
        request(
            &h,
            "PUT",
            "/buk-aiml-lab/b.csv",
            LAB_KEY,
            "x-amz-copy-source: /buk-aiml-lab/a.csv\r\nx-amz-acl: public-read-write\r\n",
            "",
        ),
        request(
            &h,
            "POST",
            "/buk-aiml-lab/c.csv?uploads",
            LAB_KEY,
            all_users,
            "",
        ),
        request(
            &h,
            "PUT",
            "/buk-aiml-lab/a.csv?acl",
            LAB_KEY,
            "x-amz-acl: public-read\r\n",
            "",
        ),
        request(&h, "PUT", "/buk-aiml-lab/a.csv?acl", LAB_KEY, "", acl_body),
        request(
            &h,
            "PUT",
            "/buk-aiml-lab?acl",
            LAB_KEY,
            "x-amz-acl: public-read\r\n",
            "",
        ),
        request(
            &h,
            "DELETE",
            "/buk-aiml-lab?publicAccessBlock",
            LAB_KEY,
            "",
            "",
        ),
        request(
            &h,
            "PUT",
            "/buk-aiml-prod-output/s.json",
            PROD_KEY,
            all_users,
            "x",
        ),
    ] {
        assert_denied(&h, &raw, "buckets.public_grant").await;
    }
    assert_nothing_upstream(&h);
    let denials = h
        .trail()
        .into_iter()
        .filter(|r| r["phase"] == "decision" && r["decision"]["rule"] == "buckets.public_grant")
        .count();
    assert_eq!(denials, 9);
    // Owner-only ACLs pass.
    for acl in ["private", "bucket-owner-full-control"] {
        let raw = request(
            &h,
            "PUT",
            "/buk-aiml-lab/a.csv",
            LAB_KEY,
            &format!("x-amz-acl: {acl}\r\n"),
            "x",
        );
        let answer = send(&h, raw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{acl}: {answer}");
    }
    assert_eq!(h.standin.seen().len(), 2);
}
