//! The differential oracle (issue 15, point 5): our reading of an S3 request — operation,
//! bucket, key, copy source — checked against a real S3 implementation's reading, s3s's.
//!
//! Three layers, one comparison ([`agree`]):
//! - in-process, no sockets: the classifier (`classify::s3::target` + `classify`) against
//!   s3s's router, over every row of `tests/fixtures/s3_operations.tsv` and a generated set;
//! - through the real gateway on real sockets to s3s (signature-verifying, recording what it
//!   routed): every request the gateway forwards must be routed by s3s exactly as the trail
//!   records it, joined on the request id; a request it refuses must not reach s3s.
//!
//! A request our classifier refuses has nothing to compare: the gateway does not forward it.
//! A request it accepts must be routed by s3s to the same operation (names mapped only by the
//! rows of [`SAME_OPERATION`]), bucket, key and copy source, or the test fails naming it.

mod common;

#[path = "common/s3s_oracle.rs"]
mod s3s_oracle;

use gatehouse::classify::s3::S3Hosts;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use s3s_oracle::{disagreement, known_difference, ours, InProcess, OracleHost, Reading, Routed};

const OPERATIONS_TSV: &str = include_str!("fixtures/s3_operations.tsv");

/// The `[s3] hosts` the operation fixture is written against (as in the classifier's own
/// table tests, `src/classify/s3/tests.rs`, which are not reachable from here).
const FIXTURE_HOSTS: &[&str] = &[
    "s3.eu-west-2.amazonaws.com",
    "*.s3.eu-west-2.amazonaws.com",
    "s3.amazonaws.com",
    "*.s3.amazonaws.com",
    "s3-external-1.amazonaws.com",
    "s3-eu-west-1.amazonaws.com",
    "*.s3.dualstack.eu-west-2.amazonaws.com",
    "*.s3-fips.us-east-1.amazonaws.com",
    "*.s3-accelerate.amazonaws.com",
    "*.s3-accelerate.dualstack.amazonaws.com",
    "s3.cn-north-1.amazonaws.com.cn",
    "*.s3.cn-north-1.amazonaws.com.cn",
    "*.s3-accesspoint.eu-west-2.amazonaws.com",
    "*.s3-object-lambda.eu-west-2.amazonaws.com",
    "*.accesspoint.s3-global.amazonaws.com",
    "*.vpce-1a2b3c4d-5e6f.s3.eu-west-2.vpce.amazonaws.com",
    "*.eu-central-1.amazonaws.com",
    "localhost",
    "*.localhost",
    "127.0.0.1",
    "[::1]",
];

const FIXTURE_ACCESS_POINTS: &[(&str, &str)] = &[(
    "lab-ap-123456789012.s3-accesspoint.eu-west-2.amazonaws.com",
    "buk-aiml-lab",
)];

fn header_map(field: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    if field == "-" {
        return map;
    }
    for pair in field.split('|') {
        let (name, value) = pair.split_once('=').expect("fixture header name=value");
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("fixture header name"),
            HeaderValue::from_str(value).expect("fixture header value"),
        );
    }
    map
}

/// The request s3s receives in-process: origin-form target, the authority as `Host`.
fn s3s_request(
    method: &Method,
    authority: Option<&str>,
    raw_target: &str,
    headers: &HeaderMap,
) -> Option<http::Request<s3s::Body>> {
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(raw_target)
        .body(form_body(headers).map_or_else(s3s::Body::empty, s3s::Body::from))
        .ok()?;
    *req.headers_mut() = headers.clone();
    if let Some(authority) = authority {
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(authority).ok()?);
    }
    Some(req)
}

/// A browser-form upload (PostObject) is read from its body: s3s needs a form with a key
/// and a file to route it. The boundary is the request's own.
fn form_body(headers: &HeaderMap) -> Option<String> {
    let content_type = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let (_, boundary) = content_type.split_once("boundary=")?;
    let b = boundary.trim();
    Some(format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nform/x.csv\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nhello\r\n--{b}--\r\n"
    ))
}

fn fixture_hosts() -> (S3Hosts, OracleHost) {
    let names: Vec<String> = FIXTURE_HOSTS.iter().map(|h| h.to_string()).collect();
    let aps: Vec<(String, String)> = FIXTURE_ACCESS_POINTS
        .iter()
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .collect();
    (
        S3Hosts::new(&names, &aps),
        OracleHost::from_gateway_hosts(FIXTURE_HOSTS, FIXTURE_ACCESS_POINTS),
    )
}

#[tokio::test]
async fn every_fixture_row_the_classifier_accepts_is_routed_alike_by_s3s() {
    let (hosts, oracle_host) = fixture_hosts();
    let s3s = InProcess::new(oracle_host);
    let mut compared = 0;
    let mut failures = Vec::new();
    for (at, line) in OPERATIONS_TSV.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [verb, host, raw_target, headers, ..] = fields[..] else {
            panic!("s3_operations.tsv:{}: want 9 fields", at + 1);
        };
        let method = Method::from_bytes(verb.as_bytes()).unwrap();
        let headers = header_map(headers);
        let Some(ours) = ours(&hosts, &method, host, raw_target, &headers) else {
            continue;
        };
        let where_ = format!("s3_operations.tsv:{}: {verb} {host} {raw_target}", at + 1);
        let Some(req) = s3s_request(&method, Some(host), raw_target, &headers) else {
            failures.push(format!("{where_}: not an HTTP request, yet we read it"));
            continue;
        };
        compared += 1;
        let theirs = s3s.route(req).await;
        let query = raw_target.split_once('?').map_or("", |(_, q)| q);
        if known_difference(&ours, &theirs, &method, query, &headers).is_some() {
            continue;
        }
        if let Some(why) = disagreement(&ours, &theirs) {
            failures.push(format!("{where_}: {why}"));
        }
    }
    assert!(compared > 150, "only {compared} rows compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One request: what a client could send, tricks included.
#[derive(Debug, Clone)]
struct Case {
    method: Method,
    /// The authority the request names (and is signed for).
    authority: Option<String>,
    target: String,
    headers: Vec<(String, String)>,
    /// How it carries the authority through the gateway (in-process: always as `Host`).
    form: Form,
}

/// How a request names its authority on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// HTTP/1.1, origin-form target, `Host` header.
    Host,
    /// HTTP/1.1, absolute-form target (`GET http://authority/path`), no `Host` line.
    Absolute,
    /// HTTP/2, `:authority` only, no `host` header.
    H2,
    /// HTTP/1.1, origin-form target, no `Host` at all: no authority to decide on.
    NoHost,
}

impl Case {
    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }
}

mod generate {
    use super::Case;
    use http::Method;
    use proptest::prelude::*;

    /// Key pieces: encodings, dot segments, `//`, `+`, unicode, and bytes that stop a path.
    const PIECES: &[&str] = &[
        "data",
        "x.csv",
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E%2E",
        "%2F",
        "%2f",
        "%2541",
        "%25",
        "%41",
        "%C3%A9",
        "%E2%82%AC",
        "%F0%9F%98%80",
        "+",
        "%2B",
        "%20",
        ";a=b",
        "~",
        "%3F",
        "%23",
        "#f",
        "a%2Fb",
        "%00",
        "%7F",
        "%FF",
        "%zz",
    ];

    /// Bucket names: valid, dotted, and not quite (upper case, too short, IP, alias, `..`).
    pub const BUCKETS: &[&str] = &[
        "buk-aiml-lab",
        "buk-raw-landing",
        "my.dotted.bucket",
        "b01",
        "BUK-AIML-LAB",
        "ab",
        "192.168.1.1",
        "xn--bucket",
        "lab-s3alias",
        "a..b",
        "buk_underscore",
        "-buk",
    ];

    /// Sub-resources and parameters, in both levels' vocabularies, some misspelt.
    const QUERY: &[&str] = &[
        "acl",
        "ACL",
        "acl=",
        "tagging",
        "uploads",
        "uploadId=u1",
        "partNumber=1",
        "versionId=v1",
        "versions",
        "list-type=2",
        "delete",
        "delete=",
        "cors",
        "policy",
        "lifecycle",
        "location",
        "restore",
        "select",
        "select-type=2",
        "retention",
        "legal-hold",
        "attributes",
        "torrent",
        "prefix=x",
        "x-id=GetObject",
        "encryption",
        "versioning",
        "website",
        "logging",
        "notification",
        "replication",
        "requestPayment",
        "ownershipControls",
        "publicAccessBlock",
        "policyStatus",
        "object-lock",
        "accelerate",
        "analytics",
        "intelligent-tiering",
        "inventory",
        "metrics",
        "id=a",
        "session",
        "metadataTable",
        "renameObject",
        "continuation-token=t",
        "max-keys=1",
        "a+b=c d",
        "response-content-type=x",
    ];

    pub fn key() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..6).prop_map(|p| p.concat())
    }

    fn query() -> impl Strategy<Value = Option<String>> {
        prop::option::weighted(
            0.6,
            prop::collection::vec(prop::sample::select(QUERY), 1..3).prop_map(|q| q.join("&")),
        )
    }

    /// The endpoints a generated request may address: path-style hosts, domains under
    /// which the first label is the bucket, a mapped access point, and hosts that are none.
    pub struct HostSet {
        pub path: &'static [&'static str],
        pub domains: &'static [&'static str],
        pub access_point: &'static str,
        pub odd: &'static [&'static str],
        /// Bucket names to address (and copy from).
        pub buckets: &'static [&'static str],
    }

    /// `(authority, path prefix)`: the bucket in the host (virtual-hosted, access point) or
    /// in the path (path style), in the spellings clients and attackers use.
    fn host_form(
        set: &'static HostSet,
        bucket: &'static str,
    ) -> impl Strategy<Value = (String, String)> {
        let tails = vec!["", ".", ":443", ":4566"];
        prop_oneof![
            3 => prop::sample::select(set.path).prop_map(move |h| (h.to_owned(), format!("/{bucket}"))),
            3 => (
                prop::sample::select(set.domains),
                prop::sample::select(tails),
                any::<bool>()
            )
                .prop_map(move |(domain, tail, upper)| {
                    let host = format!("{bucket}.{domain}{tail}");
                    let host = if upper { host.to_ascii_uppercase() } else { host };
                    (host, String::new())
                }),
            1 => Just((set.access_point.to_owned(), String::new())),
            1 => prop::sample::select(set.odd).prop_map(move |h| (
                h.replace("{bucket}", bucket),
                String::new()
            )),
        ]
    }

    pub static FIXTURE: HostSet = HostSet {
        path: &[
            "s3.eu-west-2.amazonaws.com",
            "S3.EU-WEST-2.amazonaws.com:443",
            "localhost:4566",
            "127.0.0.1:5000",
            "[::1]:5000",
            "bucket.vpce-1a2b3c4d-5e6f.s3.eu-west-2.vpce.amazonaws.com",
        ],
        domains: &[
            "s3.eu-west-2.amazonaws.com",
            "localhost",
            "bucket.vpce-1a2b3c4d-5e6f.s3.eu-west-2.vpce.amazonaws.com",
        ],
        access_point: "lab-ap-123456789012.s3-accesspoint.eu-west-2.amazonaws.com",
        odd: &[
            "{bucket}.s3.eu-central-1.amazonaws.com",
            "evil.example",
            "{bucket}.s3.eu-west-2.amazonaws.com.evil.example",
            "{bucket}",
        ],
        buckets: BUCKETS,
    };

    /// `common::s3::s3_options`'s endpoints; mostly the bucket the lab key may use, so
    /// that many requests are forwarded and compared.
    pub static GATEWAY: HostSet = HostSet {
        path: &[
            "localhost:4566",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1:4566",
        ],
        domains: &["s3.test"],
        access_point: super::LAB_ACCESS_POINT,
        odd: &[
            "{bucket}.localhost",
            "s3.test",
            "[::1]:4566",
            "{bucket}.s3.test.evil.example",
            "{bucket}",
        ],
        buckets: &[
            "buk-aiml-lab",
            "buk-aiml-lab",
            "buk-aiml-lab",
            "buk-aiml-lab",
            "BUK-AIML-LAB",
            "buk-raw-landing",
            "buk-nobody",
            "a..b",
        ],
    };

    fn copy_source(buckets: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
        let source = (
            prop::sample::select(buckets),
            key(),
            prop::sample::select(vec![
                "",
                "/",
                "?versionId=v1",
                "?versionId=",
                "%3FversionId%3Dv1",
            ]),
            any::<bool>(),
        )
            .prop_map(|(bucket, key, tail, slash)| {
                let lead = if slash { "/" } else { "" };
                if tail == "/" {
                    return format!(
                        "arn:aws:s3:eu-west-2:123456789012:accesspoint/lab-ap/object/{key}x"
                    );
                }
                format!("{lead}{bucket}/{key}x{tail}")
            });
        prop::option::weighted(0.25, source)
    }

    pub fn case(hosts: &'static HostSet) -> impl Strategy<Value = Case> {
        (
            prop::sample::select(vec![
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::POST,
                Method::DELETE,
            ]),
            prop::sample::select(hosts.buckets).prop_flat_map(move |b| host_form(hosts, b)),
            prop::option::weighted(0.7, key()),
            query(),
            copy_source(hosts.buckets),
        )
            .prop_map(|(method, (authority, prefix), key, query, copy)| {
                let mut target = match key {
                    Some(key) => format!("{prefix}/{key}"),
                    None if prefix.is_empty() => "/".to_owned(),
                    None => prefix,
                };
                if let Some(query) = query {
                    target.push('?');
                    target.push_str(&query.replace(' ', "%20"));
                }
                let mut headers = Vec::new();
                if let Some(copy) = copy {
                    headers.push(("x-amz-copy-source".to_owned(), copy));
                }
                Case {
                    method,
                    authority: Some(authority),
                    target,
                    headers,
                    form: super::Form::Host,
                }
            })
    }
}

#[test]
fn generated_requests_the_classifier_accepts_are_routed_alike_by_s3s() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let (hosts, oracle_host) = fixture_hosts();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let s3s = InProcess::new(oracle_host);
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    let compared = std::cell::Cell::new(0u32);
    let result = runner.run(&generate::case(&generate::FIXTURE), |case| {
        let headers = case.header_map();
        let authority = case.authority.as_deref().unwrap_or_default();
        let Some(ours) = ours(&hosts, &case.method, authority, &case.target, &headers) else {
            return Ok(());
        };
        let req = s3s_request(
            &case.method,
            case.authority.as_deref(),
            &case.target,
            &headers,
        )
        .ok_or_else(|| TestCaseError::fail(format!("we read an invalid request: {case:?}")))?;
        let theirs = runtime.block_on(s3s.route(req));
        compared.set(compared.get() + 1);
        let query = case.target.split_once('?').map_or("", |(_, q)| q);
        if known_difference(&ours, &theirs, &case.method, query, &headers).is_some() {
            return Ok(());
        }
        match disagreement(&ours, &theirs) {
            Some(why) => Err(TestCaseError::fail(format!("{case:?}: {why}"))),
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Most generated requests are refused (that is the point of the tricks); enough must be
    // read for the comparison to mean something.
    assert!(compared.get() > 300, "only {} compared", compared.get());
}

// ---- through the gateway, on real sockets ----

/// The secret s3s verifies signatures with for `LAB_KEY` (the gateway never sees it).
const LAB_SECRET: &str = "oracle-lab-secret-not-a-real-one";

/// The `[s3]` endpoints of `common::s3::s3_options`, for s3s's host reading.
const GATEWAY_HOSTS: &[&str] = &["localhost", "127.0.0.1", "*.s3.test"];
const GATEWAY_ACCESS_POINTS: &[(&str, &str)] = &[
    (
        "rawap-123456789012.s3-accesspoint.us-east-1.amazonaws.com",
        "buk-raw-landing",
    ),
    (LAB_ACCESS_POINT, "buk-aiml-lab"),
];

/// An access point on the lab bucket, added to `s3_options` so that requests in the
/// access-point form are forwarded (the raw bucket's are refused to the lab key).
const LAB_ACCESS_POINT: &str = "labap-123456789012.s3-accesspoint.us-east-1.amazonaws.com";

/// s3s on a loopback port, verifying SigV4 for `LAB_KEY` and recording what it routed;
/// `reached` is every request that arrived at all (its `x-request-id`), routed or not.
struct Upstream {
    url: String,
    recorder: s3s_oracle::Recorder,
    reached: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

async fn start_upstream() -> Upstream {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let recorder = s3s_oracle::Recorder::new();
    // s3s routes a request (host, path, query, signature, operation) before it calls the S3
    // implementation, so an S3 that executes nothing routes exactly as s3s-fs does — without
    // writing generated keys to disk (s3s-fs panics on some dot-segment keys).
    let mut builder = s3s::service::S3ServiceBuilder::new(s3s_oracle::Nothing);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        common::s3::LAB_KEY,
        LAB_SECRET,
    ));
    builder.set_host(OracleHost::from_gateway_hosts(
        GATEWAY_HOSTS,
        GATEWAY_ACCESS_POINTS,
    ));
    builder.set_access(recorder.clone());
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let reached = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reached.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(move |req: http::Request<_>| {
                    seen.lock().unwrap().push(
                        req.headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    );
                    let service = service.clone();
                    async move { hyper::service::Service::call(&service, req).await }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), handler)
                    .await;
            });
        }
    });
    Upstream {
        url,
        recorder,
        reached,
    }
}

/// AWS's URI encoding as SigV4 canonicalises it (unreserved characters kept).
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data.as_bytes()).as_ref().to_vec()
}

/// SigV4 header signing as S3 verifies it, for `host`, `x-amz-content-sha256` and
/// `x-amz-date`, with an unsigned payload: `(x-amz-date, Authorization)`.
fn sign(method: &Method, host: &str, target: &str) -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(time::macros::format_description!("[year][month][day]"))
        .unwrap();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap();
    // What a server reads: the parsed target, where a raw `#…` is a fragment.
    let uri: http::Uri = target.parse().unwrap_or_default();
    let (path, query) = (uri.path(), uri.query().unwrap_or_default());
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    // Form decoding, as s3s reads a query (`+` is a space), then SigV4's own encoding.
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(&part.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .map(|(n, v)| (uri_encode(&decode(n), true), uri_encode(&decode(v), true)))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query = pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical = format!(
        "{method}\n{}\n{query}\nhost:{host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{stamp}\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD",
        uri_encode(&path, false)
    );
    let scope = format!("{date}/us-east-1/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes()
        ))
    );
    let mut key = hmac(format!("AWS4{LAB_SECRET}").as_bytes(), &date);
    for part in ["us-east-1", "s3", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &to_sign));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
        common::s3::LAB_KEY
    );
    (stamp, auth)
}

/// The raw HTTP/1.1 request for `case`, signed for the authority it names; `id` as
/// `x-request-id`. [`Form::Absolute`]: an absolute-form target and no `Host` line.
fn raw_request(case: &Case, id: &str) -> String {
    let authority = case.authority.clone().unwrap_or_default();
    let (stamp, auth) = sign(&case.method, &authority, &case.target);
    let mut extra = String::new();
    for (name, value) in &case.headers {
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    let (line_target, host_line) = match case.form {
        Form::Absolute => (format!("http://{authority}{}", case.target), String::new()),
        Form::NoHost => (case.target.clone(), String::new()),
        _ => (case.target.clone(), format!("Host: {authority}\r\n")),
    };
    format!(
        "{} {line_target} HTTP/1.1\r\n{host_line}Authorization: {auth}\r\nx-amz-date: {stamp}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nx-request-id: {id}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n",
        case.method
    )
}

/// Sends `case` over HTTP/2 (prior knowledge, cleartext): `:authority` only, no `host`
/// header. The answer in the shape [`status_code`] and [`error_code`] read.
async fn send_h2(port: u16, case: &Case, id: &str) -> String {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let authority = case.authority.clone().unwrap_or_default();
    let (stamp, auth) = sign(&case.method, &authority, &case.target);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(case.method.clone())
        .uri(format!("http://{authority}{}", case.target))
        .header("authorization", auth)
        .header("x-amz-date", stamp)
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .header("x-request-id", id);
    for (name, value) in &case.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
    match sender.send_request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            format!("HTTP/2 {status}\r\n\r\n{}", String::from_utf8_lossy(&body))
        }
        Err(e) => format!("HTTP/2 000 {e}"),
    }
}

/// `HTTP/1.1 501 Not Implemented` → `501 Not Implemented`, as `InProcess::route` says it.
fn status_code(answer: &str) -> &str {
    let line = answer.lines().next().unwrap_or_default();
    line.split_once(' ').map_or(line, |(_, rest)| rest)
}

fn error_code(answer: &str) -> &str {
    answer
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code)
}

/// Sends every case through the gateway to s3s and compares, per request id, the trail's
/// decision record with s3s's route. Returns the failures, each naming its request.
async fn replay(cases: &[Case], min_forwarded: usize) -> Vec<String> {
    let upstream = start_upstream().await;
    let url = upstream.url.clone();
    let extra = format!(
        "\n[[s3.access_point]]\nhost = \"{LAB_ACCESS_POINT}\"\nbucket = \"buk-aiml-lab\"\n"
    );
    let h = common::s3::s3_harness_from(|_| common::s3::s3_options(&url, &extra), |_| {}).await;
    let mut sent = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let id = format!("oracle-{n}");
        let answer = match case.form {
            Form::H2 => send_h2(h.port, case, &id).await,
            _ => common::s3::send(&h, raw_request(case, &id)).await,
        };
        sent.push((id, case, answer));
    }
    let trail = h.trail();
    let reached = upstream.reached.lock().unwrap().clone();
    let routed = upstream.recorder.seen();
    let mut failures = Vec::new();
    let mut forwarded = 0;
    for (id, case, answer) in &sent {
        let status = answer.lines().next().unwrap_or_default();
        let decision = trail
            .iter()
            .find(|r| r["phase"] == "decision" && r["request_id"] == id.as_str());
        let allowed = decision.is_some_and(|d| d["decision"]["effect"] == "allow");
        let arrived = reached.iter().any(|r| r.as_deref() == Some(id.as_str()));
        let name = format!("{id} {case:?} => {status}");
        if std::env::var("ORACLE_DEBUG").is_ok() {
            eprintln!(
                "{id} {status} {:?}",
                decision.map(|d| d["decision"]["rule"].clone())
            );
        }
        if !allowed {
            if arrived {
                failures.push(format!("{name}: not allowed, yet it reached s3s"));
            }
            continue;
        }
        forwarded += 1;
        let d = decision.unwrap();
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let ours = Routed {
            op: text(&d["action"]["name"]).unwrap_or_default(),
            bucket: text(&d["asset"]["bucket"]),
            key: text(&d["asset"]["key"]),
            copy_source: text(&d["asset"]["copy_source"]),
            request_id: None,
        };
        let theirs: Reading = match routed.iter().find(|r| r.request_id.as_deref() == Some(id)) {
            Some(r) => Ok(Routed {
                request_id: None,
                ..r.clone()
            }),
            None if arrived => Err(format!("{} {}", status_code(answer), error_code(answer))),
            None => Err("allowed, but nothing reached s3s".to_owned()),
        };
        let query = case.target.split_once('?').map_or("", |(_, q)| q);
        if known_difference(&ours, &theirs, &case.method, query, &case.header_map()).is_some() {
            continue;
        }
        if let Some(why) = disagreement(&ours, &theirs) {
            failures.push(format!("{name}: {why}"));
        }
    }
    if forwarded < min_forwarded {
        failures.push(format!(
            "only {forwarded} of {} requests forwarded: the comparison compared too little",
            sent.len()
        ));
    }
    failures
}

/// The fixed corpus through the gateway: one request per operation-table row of the fixture
/// that names our test buckets, re-addressed to the gateway's hosts in path-style,
/// virtual-hosted and access-point forms.
fn fixed_corpus(port: u16) -> Vec<Case> {
    let mut cases = Vec::new();
    for line in OPERATIONS_TSV.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let (verb, host, raw_target, headers, op, bucket) = (f[0], f[1], f[2], f[3], f[4], f[6]);
        // Rows that read as an operation on buk-aiml-lab in path style or virtual-hosted form
        // on the fixture's main endpoint; the host forms are then the gateway's own.
        if op.starts_with('!') || bucket != "buk-aiml-lab" {
            continue;
        }
        let rest = if host == "s3.eu-west-2.amazonaws.com" {
            match raw_target.strip_prefix("/buk-aiml-lab") {
                Some(rest) => rest.to_owned(),
                None => continue,
            }
        } else if host == "buk-aiml-lab.s3.eu-west-2.amazonaws.com" {
            raw_target.to_owned()
        } else {
            continue;
        };
        let rest = if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest
        };
        let headers: Vec<(String, String)> = header_map(headers)
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let method = Method::from_bytes(verb.as_bytes()).unwrap();
        for (authority, prefix) in [
            (format!("localhost:{port}"), "/buk-aiml-lab"),
            (format!("buk-aiml-lab.s3.test:{port}"), ""),
            (format!("BUK-AIML-LAB.S3.TEST:{port}"), ""),
            (
                "rawap-123456789012.s3-accesspoint.us-east-1.amazonaws.com".to_owned(),
                "",
            ),
            (LAB_ACCESS_POINT.to_owned(), ""),
        ] {
            let target = if prefix.is_empty() {
                rest.clone()
            } else if rest.starts_with("/?") {
                format!("{prefix}{}", &rest[1..])
            } else {
                format!("{prefix}{rest}")
            };
            cases.push(Case {
                method: method.clone(),
                authority: Some(authority),
                target,
                headers: headers.clone(),
                form: Form::Host,
            });
        }
    }
    cases
}

#[tokio::test]
async fn requests_the_gateway_forwards_are_routed_by_s3s_as_the_trail_records_them() {
    // The gateway's port is known only once it runs; the corpus uses a placeholder port
    // that `replay` does not need (the Host names only have to match `[s3] hosts`).
    let cases = fixed_corpus(4566);
    assert!(cases.len() > 300, "only {} cases", cases.len());
    let failures = replay(&cases, 250).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A seeded generated set through the gateway: the same generator, addressed to the
/// gateway's own endpoints. The seed is fixed so a failure names a request that reproduces.
#[tokio::test]
async fn generated_requests_the_gateway_forwards_are_routed_by_s3s_as_recorded() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[15; 32]),
    );
    let strategy = generate::case(&generate::GATEWAY);
    let cases: Vec<Case> = (0..1500)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let failures = replay(&cases, 150).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Requests without a `Host` line — HTTP/1.1 absolute-form, HTTP/2 `:authority` only — in
/// path-style, virtual-hosted and access-point forms, including issue 15's bypass shape (a
/// lab-bucket host with another bucket's name leading the path). s3s must route each as the
/// gateway decided, which holds only if the gateway forwards the decided authority as `Host`.
#[tokio::test]
async fn requests_without_host_are_routed_by_s3s_as_the_gateway_decided() {
    let mut cases = Vec::new();
    for form in [Form::Absolute, Form::H2] {
        for (authority, target) in [
            ("localhost:4566", "/buk-aiml-lab/data/x.csv"),
            ("localhost:4566", "/buk-aiml-lab?list-type=2"),
            ("buk-aiml-lab.s3.test:4566", "/data/x.csv"),
            (
                "buk-aiml-lab.s3.test:4566",
                "/buk-raw-landing/pii/customers.csv",
            ),
            ("buk-aiml-lab.s3.test", "/buk-raw-landing?delete"),
            ("BUK-AIML-LAB.S3.TEST", "/?acl"),
            (
                "rawap-123456789012.s3-accesspoint.us-east-1.amazonaws.com",
                "/buk-aiml-lab/data/x.csv",
            ),
            (LAB_ACCESS_POINT, "/data/x.csv"),
            (LAB_ACCESS_POINT, "/buk-raw-landing/pii/customers.csv"),
        ] {
            for method in [Method::GET, Method::PUT, Method::DELETE] {
                cases.push(Case {
                    method,
                    authority: Some(authority.to_owned()),
                    target: target.to_owned(),
                    headers: Vec::new(),
                    form,
                });
            }
        }
    }
    let failures = replay(&cases, 10).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A request that names no authority at all (HTTP/1.1 origin-form, no `Host`) has nothing
/// to be decided on: the gateway refuses it and nothing reaches s3s.
#[tokio::test]
async fn requests_naming_no_authority_never_reach_s3s() {
    let cases: Vec<Case> = [
        "/buk-aiml-lab/data/x.csv",
        "/buk-raw-landing/pii/customers.csv",
        "/",
    ]
    .into_iter()
    .flat_map(|target| {
        [Method::GET, Method::PUT].map(|method| Case {
            method,
            authority: Some("buk-aiml-lab.s3.test".to_owned()),
            target: target.to_owned(),
            headers: Vec::new(),
            form: Form::NoHost,
        })
    })
    .collect();
    let failures = replay(&cases, 0).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
