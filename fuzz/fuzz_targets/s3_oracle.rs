//! The S3 differential oracle as a fuzz target (issue 15, point 5): for any request, the
//! classifier's reading (`classify::s3::target` + `classify`) must equal the route s3s 0.14.1
//! takes — operation, bucket, key, copy source — whenever the classifier accepts it.
//! In-process, no sockets: s3s's `S3Service::call` with an S3 that executes nothing and an
//! access hook that records the route (`tests/common/s3s_oracle.rs`, shared with
//! `tests/s3_oracle.rs`).
//!
//! Needs in fuzz/Cargo.toml:
//!   [[bin]]
//!   name = "s3_oracle"
//!   path = "fuzz_targets/s3_oracle.rs"
//!   test = false
//!   doc = false
//!   bench = false
//! and, as dependencies, s3s = "=0.14.1", http = "1", http-body-util = "0.1",
//! serde = { version = "1", features = ["derive"] }, serde_json = "1",
//! tokio = { version = "1", features = ["rt"] } (besides gatehouse and libfuzzer-sys).
//! Run: `cargo +stable fuzz run --sanitizer none s3_oracle`.
//!
//! Input: one byte choosing the method, then `authority \n target [\n x-amz-copy-source]`.

#![no_main]

#[path = "../../tests/common/s3s_oracle.rs"]
mod s3s_oracle;

use std::sync::OnceLock;

use gatehouse::classify::s3::S3Hosts;
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use s3s_oracle::{disagreement, known_difference, ours, InProcess, OracleHost};

/// The endpoints both sides are configured with: path style, virtual-hosted, an access point.
const HOSTS: &[&str] = &[
    "s3.eu-west-2.amazonaws.com",
    "*.s3.eu-west-2.amazonaws.com",
    "localhost",
    "*.localhost",
    "127.0.0.1",
    "*.vpce-1a2b3c4d-5e6f.s3.eu-west-2.vpce.amazonaws.com",
];
const ACCESS_POINTS: &[(&str, &str)] = &[(
    "lab-ap-123456789012.s3-accesspoint.eu-west-2.amazonaws.com",
    "buk-aiml-lab",
)];
const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
];

struct Oracle {
    hosts: S3Hosts,
    s3s: InProcess,
    runtime: tokio::runtime::Runtime,
}

fn oracle() -> &'static Oracle {
    static ORACLE: OnceLock<Oracle> = OnceLock::new();
    ORACLE.get_or_init(|| {
        let names: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
        let aps: Vec<(String, String)> = ACCESS_POINTS
            .iter()
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .collect();
        Oracle {
            hosts: S3Hosts::new(&names, &aps),
            s3s: InProcess::new(OracleHost::from_gateway_hosts(HOSTS, ACCESS_POINTS)),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (Some(authority), Some(raw_target)) = (parts.next(), parts.next()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(copy) = parts.next() {
        let Ok(value) = HeaderValue::from_str(copy) else {
            return;
        };
        headers.insert("x-amz-copy-source", value);
    }
    let o = oracle();
    let Some(ours) = ours(&o.hosts, method, authority, raw_target, &headers) else {
        return;
    };
    // A Host or target that is not valid HTTP never reaches the classifier in the gateway
    // (hyper refuses it first), so there is nothing to compare.
    let Ok(host) = HeaderValue::from_str(authority) else {
        return;
    };
    let Ok(mut req) = http::Request::builder()
        .method(method.clone())
        .uri(raw_target)
        .body(s3s::Body::empty())
    else {
        return;
    };
    *req.headers_mut() = headers.clone();
    req.headers_mut().insert(http::header::HOST, host);
    let theirs = o.runtime.block_on(o.s3s.route(req));
    let query = raw_target.split_once('?').map_or("", |(_, q)| q);
    if known_difference(&ours, &theirs, method, query, &headers).is_some() {
        return;
    }
    if let Some(why) = disagreement(&ours, &theirs) {
        panic!("{method} {authority} {raw_target} {headers:?}: {why}");
    }
});
