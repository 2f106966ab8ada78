//! The S3 readers (src/classify/s3.rs): bucket and key from the host and path, the operation
//! from the method, query and headers, the access key from whichever signature carries it,
//! and `x-amz-copy-source`.
//!
//! Input: `METHOD<TAB>authority<TAB>target<TAB>headers` (headers as `name=value|…`), as in
//! tests/fixtures/s3_operations.tsv (further columns ignored), against that fixture's hosts
//! (tests/fixtures/s3_hosts.tsv).
//!
//! Properties ("no two readings"), beyond not panicking:
//! - ASCII case in the authority, and a port, never change the bucket or key;
//! - percent-encoding literal characters of the path (other than `/` and `%`) never changes
//!   the bucket, the key or the refusal: S3 decodes once, so must the gateway;
//! - the order of query parameters never changes the operation or the credential read;
//! - a copy source that parses, written back canonically (everything but unreserved
//!   characters and `/` encoded), parses to the same source.
#![no_main]

use gatehouse::classify::s3::{self, CopySource, S3Hosts};
use gatehouse_fuzz::{encode_literals, fields, header_map, method, reversed_query, split_target};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::sync::OnceLock;

/// The hosts and access points tests/fixtures/s3_operations.tsv is read against.
const HOSTS_TSV: &str = include_str!("../../tests/fixtures/s3_hosts.tsv");

/// What botocore leaves unencoded in a copy source: unreserved characters and `/`.
const COPY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

fn hosts() -> &'static S3Hosts {
    static HOSTS: OnceLock<S3Hosts> = OnceLock::new();
    HOSTS.get_or_init(|| {
        let (mut names, mut points) = (Vec::new(), Vec::new());
        let rows = HOSTS_TSV
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for row in rows {
            match row.split_once('\t') {
                Some((host, bucket)) => points.push((host.to_owned(), bucket.to_owned())),
                None => names.push(row.to_owned()),
            }
        }
        S3Hosts::new(&names, &points)
    })
}

fn canonical_copy_source(source: &CopySource) -> String {
    let key = utf8_percent_encode(&source.key, COPY_SAFE);
    let mut out = match (&source.bucket, &source.access_point) {
        (Some(bucket), _) => format!("/{bucket}/{key}"),
        (None, Some(name)) => {
            format!("arn:aws:s3:eu-west-2:123456789012:accesspoint/{name}/object/{key}")
        }
        (None, None) => unreachable!("a copy source names a bucket or an access point"),
    };
    if let Some(version) = &source.version_id {
        out.push_str("?versionId=");
        out.extend(utf8_percent_encode(version, NON_ALPHANUMERIC));
    }
    out
}

fn check_copy_source(value: &str) {
    if let Ok(source) = s3::parse_copy_source(value) {
        let canonical = canonical_copy_source(&source);
        assert_eq!(
            s3::parse_copy_source(&canonical).as_ref(),
            Ok(&source),
            "{value:?} and its canonical spelling {canonical:?} name different sources"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(line) = gatehouse_fuzz::text(data) else {
        return;
    };
    let row = fields(line);
    let [m, authority, target, rest @ ..] = row.as_slice() else {
        if let [value] = row.as_slice() {
            check_copy_source(value);
        }
        return;
    };
    let method = method(m);
    let headers = header_map(rest.first().copied().unwrap_or("-"));
    let (path, query) = split_target(target);
    let hosts = hosts();

    let read = s3::target(hosts, authority, path);
    assert_eq!(
        s3::target(hosts, &authority.to_ascii_uppercase(), path),
        read,
        "{authority:?} in upper case names another bucket"
    );
    if !authority.contains(':') {
        assert_eq!(
            s3::target(hosts, &format!("{authority}:8443"), path),
            read,
            "{authority:?} with a port names another bucket"
        );
    }
    for stride in [1, 2] {
        let respelled = encode_literals(path, &['/', '%'], stride);
        assert_eq!(
            s3::target(hosts, authority, &respelled),
            read,
            "{path:?} and {respelled:?} are read differently"
        );
    }

    let reversed = query.map(reversed_query);
    let claim = s3::access_key(&headers, query);
    assert_eq!(
        s3::access_key(&headers, reversed.as_deref()),
        claim,
        "the order of {query:?} changes the credential"
    );
    assert_eq!(
        s3::is_presigned(reversed.as_deref()),
        s3::is_presigned(query)
    );

    if let Ok(target) = read {
        let operation = s3::classify(&method, &target, query, &headers);
        assert_eq!(
            s3::classify(&method, &target, reversed.as_deref(), &headers),
            operation,
            "the order of {query:?} changes the operation"
        );
    }
    for value in headers.get_all("x-amz-copy-source") {
        if let Ok(value) = value.to_str() {
            check_copy_source(value);
        }
    }
});
