use std::collections::HashSet;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const OPERATIONS_TSV: &str = include_str!("../../../tests/fixtures/s3_operations.tsv");
const CREDENTIALS_TSV: &str = include_str!("../../../tests/fixtures/s3_credentials.tsv");
const HOSTS_TSV: &str = include_str!("../../../tests/fixtures/s3_hosts.tsv");

/// The `[s3] hosts` and access points the operation fixture is read against.
pub(super) fn hosts() -> S3Hosts {
    let mut names = Vec::new();
    let mut access_points = Vec::new();
    for (_, row) in rows(HOSTS_TSV) {
        match row.as_slice() {
            [host] => names.push(host.to_string()),
            [host, bucket] => access_points.push((host.to_string(), bucket.to_string())),
            _ => panic!("s3_hosts.tsv: a host, or an access point host and its bucket"),
        }
    }
    S3Hosts::new(&names, &access_points)
}

/// Fixture rows: tab-separated fields, `#` comments and blank lines skipped.
fn rows(tsv: &'static str) -> impl Iterator<Item = (usize, Vec<&'static str>)> {
    tsv.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(at, line)| (at + 1, line.split('\t').collect()))
}

/// `name=value|name=value`, `-` for none; a name may repeat.
pub(super) fn header_map(field: &str) -> HeaderMap {
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

fn optional(field: &str) -> Option<&str> {
    (field != "-").then_some(field)
}

pub(super) fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

pub(super) fn request(
    hosts: &S3Hosts,
    method: &Method,
    authority: &str,
    raw_target: &str,
    headers: &HeaderMap,
) -> Result<S3Classification, S3Error> {
    let (path, query) = split_target(raw_target);
    let target = target(hosts, authority, path)?;
    classify(method, &target, query, headers)
}

/// The fixture's spelling of a copy source: `bucket/key@version`, `ap:name/key@version`.
fn fixture_copy(source: &CopySource) -> String {
    let mut out = match (&source.bucket, &source.access_point) {
        (Some(bucket), None) => format!("{bucket}/{}", source.key),
        (None, Some(name)) => format!("ap:{name}/{}", source.key),
        other => panic!("a copy source names a bucket or an access point: {other:?}"),
    };
    if let Some(version) = &source.version_id {
        out.push('@');
        out.push_str(version);
    }
    out
}

#[test]
fn every_operation_row_classifies_as_expected() {
    let hosts = hosts();
    let mut count = 0;
    for (line, fields) in rows(OPERATIONS_TSV) {
        let [verb, host, raw_target, headers, operation, access, bucket, key, copy] = fields[..]
        else {
            panic!("s3_operations.tsv:{line}: want 9 fields, got {fields:?}");
        };
        let method = Method::from_bytes(verb.as_bytes()).expect("fixture method");
        let where_ = format!("s3_operations.tsv:{line}: {verb} {host} {raw_target}");
        let got = request(&hosts, &method, host, raw_target, &header_map(headers));
        count += 1;
        if let Some(error) = operation.strip_prefix('!') {
            match got {
                Err(e) => assert_eq!(format!("{e:?}"), error, "{where_}"),
                Ok(c) => panic!("{where_}: want {error}, got {c:?}"),
            }
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{where_}: refused: {e:?}"));
        assert_eq!(got.action.name, operation, "{where_}");
        assert_eq!(got.access.as_str(), access, "{where_}");
        assert_eq!(got.action.category, got.access.category(), "{where_}");
        assert_eq!(got.bucket.as_deref(), optional(bucket), "{where_}: bucket");
        assert_eq!(got.key.as_deref(), optional(key), "{where_}: key");
        let got_copy = got.copy_source.as_ref().map(fixture_copy);
        assert_eq!(got_copy.as_deref(), optional(copy), "{where_}: copy source");
        assert!(
            !got.presigned,
            "{where_}: no presigned credential in the fixture"
        );
    }
    assert!(count > 250, "only {count} operation rows");
}

#[test]
fn every_catalog_operation_has_a_fixture_row() {
    let in_fixture: HashSet<&str> = rows(OPERATIONS_TSV).map(|(_, f)| f[4]).collect();
    for op in CATALOG {
        assert!(
            in_fixture.contains(op.name()),
            "{} has no fixture row",
            op.name()
        );
    }
    let known: HashSet<&str> = CATALOG.iter().map(|op| op.name()).collect();
    for name in &in_fixture {
        assert!(
            name.starts_with('!') || known.contains(name),
            "fixture names {name}, which CATALOG lacks"
        );
    }
}

#[test]
fn catalog_names_are_unique_aws_names_with_consistent_categories() {
    let mut seen = HashSet::new();
    for op in CATALOG {
        let name = op.name();
        assert!(seen.insert(name), "{name} listed twice");
        assert!(op.action.known);
        assert!(
            name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{name} is not an AWS operation name"
        );
        assert_eq!(op.action.category, op.access.category(), "{name}");
    }
}

/// The access classes the bucket rules are written against (issue 3, `reference/s3.md`).
#[test]
fn access_classes_are_those_the_policy_expects() {
    let expected: &[(S3Access, &[&str])] = &[
        (
            ReadData,
            &[
                "GetObject",
                "SelectObjectContent",
                "GetObjectTorrent",
                "RestoreObject",
                "CreateSession",
            ],
        ),
        (
            List,
            &[
                "ListObjects",
                "ListObjectsV2",
                "ListObjectVersions",
                "ListMultipartUploads",
                "ListParts",
            ],
        ),
        (
            ReadMetadata,
            &[
                "HeadObject",
                "HeadBucket",
                "GetObjectAttributes",
                "GetObjectAcl",
                "GetObjectTagging",
                "GetObjectLegalHold",
                "GetObjectRetention",
                "GetBucketPolicy",
                "GetBucketAcl",
                "GetBucketVersioning",
            ],
        ),
        (
            WriteData,
            &[
                "PutObject",
                "CopyObject",
                "UploadPart",
                "UploadPartCopy",
                "CreateMultipartUpload",
                "CompleteMultipartUpload",
                "AbortMultipartUpload",
                "PostObject",
                "DeleteObject",
                "DeleteObjects",
                "PutObjectTagging",
                "PutObjectAcl",
                "PutObjectLegalHold",
                "PutObjectRetention",
                "DeleteObjectTagging",
            ],
        ),
        (
            ChangeBucket,
            &[
                "CreateBucket",
                "DeleteBucket",
                "DeleteBucketLifecycle",
                "PutBucketLifecycleConfiguration",
                "PutBucketVersioning",
                "PutBucketPolicy",
                "DeleteBucketPolicy",
                "PutBucketAcl",
                "PutPublicAccessBlock",
                "PutObjectLockConfiguration",
            ],
        ),
        (ListBuckets, &["ListBuckets"]),
    ];
    for (access, names) in expected {
        for name in *names {
            let op = CATALOG
                .iter()
                .find(|op| op.name() == *name)
                .unwrap_or_else(|| panic!("{name} missing from CATALOG"));
            assert_eq!(op.access, *access, "{name}");
        }
    }
    // Every bucket-level read of a setting is metadata, every change of one is a bucket change.
    for op in CATALOG {
        let name = op.name();
        if name.starts_with("GetBucket") || name.starts_with("ListBucket") && name != "ListBuckets"
        {
            assert_eq!(op.access, ReadMetadata, "{name}");
        }
        if name.starts_with("PutBucket") || name.starts_with("DeleteBucket") {
            assert_eq!(op.access, ChangeBucket, "{name}");
        }
    }
    assert_eq!(ReadData.category(), Category::Download);
    assert_eq!(WriteData.category(), Category::Upload);
    assert_eq!(ChangeBucket.category(), Category::Config);
    for access in [List, ReadMetadata, ListBuckets] {
        assert_eq!(access.category(), Category::Metadata);
    }
}

#[test]
fn governance_operations_carry_their_exact_aws_names() {
    assert_eq!(DELETE_BUCKET_LIFECYCLE.name(), "DeleteBucketLifecycle");
    assert_eq!(
        PUT_BUCKET_LIFECYCLE_CONFIGURATION.name(),
        "PutBucketLifecycleConfiguration"
    );
    assert_eq!(PUT_BUCKET_VERSIONING.name(), "PutBucketVersioning");
    assert_eq!(DELETE_BUCKET.name(), "DeleteBucket");
    assert_eq!(PUT_BUCKET_POLICY.name(), "PutBucketPolicy");
    assert_eq!(PUT_BUCKET_ACL.name(), "PutBucketAcl");
    let hosts = hosts();
    let put = |target: &str| {
        request(&hosts, &Method::PUT, "127.0.0.1", target, &HeaderMap::new()).expect("classify")
    };
    assert!(put("/buk-aiml-lab?policy").changes_permissions());
    assert!(put("/buk-aiml-lab?acl").changes_permissions());
    assert!(put("/buk-aiml-lab/x?acl").changes_permissions());
    assert!(put("/buk-aiml-lab?publicAccessBlock").changes_permissions());
    assert!(!put("/buk-aiml-lab?tagging").changes_permissions());
    assert!(!put("/buk-aiml-lab/x").changes_permissions());
}

#[test]
fn every_credential_row_is_read_as_expected() {
    let mut count = 0;
    for (line, fields) in rows(CREDENTIALS_TSV) {
        let [headers, query, expected, scheme, temporary, presigned] = fields[..] else {
            panic!("s3_credentials.tsv:{line}: want 6 fields, got {fields:?}");
        };
        let where_ = format!("s3_credentials.tsv:{line}");
        let headers = header_map(headers);
        let query = optional(query);
        count += 1;
        assert_eq!(
            is_presigned(query),
            presigned == "yes",
            "{where_}: presigned"
        );
        let target = S3Target {
            bucket: Some("buk-raw".into()),
            key: Some("x".into()),
        };
        let class = classify(&Method::GET, &target, query, &headers).expect("GetObject");
        assert_eq!(class.presigned, presigned == "yes", "{where_}: presigned");
        let got = access_key(&headers, query);
        if let Some(error) = expected.strip_prefix('!') {
            match got {
                Err(e) => assert_eq!(format!("{e:?}"), error, "{where_}"),
                Ok(claim) => panic!("{where_}: want {error}, got {claim:?}"),
            }
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{where_}: refused: {e:?}"));
        match (got, optional(expected)) {
            (None, None) => {}
            (Some(claim), Some(id)) => {
                assert_eq!(claim.id, id, "{where_}");
                assert_eq!(claim.scheme.as_str(), scheme, "{where_}");
                assert_eq!(claim.temporary, temporary == "yes", "{where_}: temporary");
                assert_eq!(
                    claim.scheme.is_presigned(),
                    presigned == "yes",
                    "{where_}: scheme"
                );
            }
            (got, want) => panic!("{where_}: want {want:?}, got {got:?}"),
        }
    }
    assert!(count > 60, "only {count} credential rows");
}

#[test]
fn keys_longer_than_s3_allows_are_refused() {
    let hosts = hosts();
    let at_limit = format!("/buk-aiml-lab/{}", "k".repeat(1024));
    let got = target(&hosts, "127.0.0.1", &at_limit).expect("1024 bytes is a key");
    assert_eq!(got.key.map(|k| k.len()), Some(1024));
    let over = format!("/buk-aiml-lab/{}", "k".repeat(1025));
    assert_eq!(target(&hosts, "127.0.0.1", &over), Err(S3Error::KeyTooLong));
    // The limit is on decoded bytes: 400 × `%C3%A9` is 800 bytes.
    let encoded = format!("/buk-aiml-lab/{}", "%C3%A9".repeat(400));
    assert!(target(&hosts, "127.0.0.1", &encoded).is_ok());
}

#[test]
fn hosts_match_without_case_port_or_trailing_dot() {
    let hosts = hosts();
    for authority in [
        "s3.eu-west-2.amazonaws.com",
        "S3.EU-WEST-2.AMAZONAWS.COM:443",
        "buk.s3.eu-west-2.amazonaws.com.",
        "localhost:4566",
        "127.0.0.1:5000",
        "[::1]:5000",
        "lab-ap-123456789012.s3-accesspoint.eu-west-2.amazonaws.com",
        // Unmapped access points under a pattern match, and `target` refuses them.
        "raw-ap-123456789012.s3-accesspoint.eu-west-2.amazonaws.com",
    ] {
        assert!(hosts.matches(authority), "{authority}");
    }
    for authority in [
        "s3.us-east-1.amazonaws.com",
        "s3.eu-west-2.amazonaws.com.evil.example",
        "evil-s3.eu-west-2.amazonaws.com",
        "10.0.0.1",
        "127.0.0.2:5000",
        "localhost:port",
        "",
        "[::1",
    ] {
        assert!(!hosts.matches(authority), "{authority}");
    }
    let only_pattern = S3Hosts::new(&["*.s3.test".into()], &[]);
    assert!(only_pattern.matches("b.s3.test"));
    assert!(
        !only_pattern.matches("s3.test"),
        "a pattern is not its own base"
    );
}

#[test]
fn the_most_specific_pattern_names_the_bucket() {
    let hosts = S3Hosts::new(
        &[
            "*.example".into(),
            "*.s3.example".into(),
            "s3.example".into(),
        ],
        &[],
    );
    let got = target(&hosts, "buk-raw.s3.example", "/x").expect("virtual-hosted");
    assert_eq!(got.bucket.as_deref(), Some("buk-raw"));
    let got = target(&hosts, "s3.example", "/buk-raw/x").expect("path style");
    assert_eq!(got.bucket.as_deref(), Some("buk-raw"));
}

#[test]
fn copy_sources_parse_and_display() {
    let plain = parse_copy_source("/buk-raw/dir/a%20b?versionId=v%2B1").expect("parses");
    assert_eq!(plain.bucket.as_deref(), Some("buk-raw"));
    assert_eq!(plain.access_point, None);
    assert_eq!(plain.key, "dir/a b");
    assert_eq!(plain.version_id.as_deref(), Some("v+1"));
    assert_eq!(plain.display(), "buk-raw/dir/a b?versionId=v+1");
    let arn = parse_copy_source("arn:aws:s3:eu-west-2:123456789012:accesspoint/raw-ap/object/k")
        .expect("parses");
    assert_eq!(arn.bucket, None);
    assert_eq!(arn.access_point.as_deref(), Some("raw-ap"));
    assert_eq!(arn.display(), "accesspoint:raw-ap/k");
}

#[test]
fn bucket_names_follow_s3_rules() {
    for ok in [
        "abc",
        "buk-aiml-lab",
        "my.dotted.bucket",
        "1bucket",
        &"b".repeat(63),
    ] {
        assert!(is_valid_bucket_name(ok), "{ok}");
    }
    for bad in [
        "ab",
        "Bucket",
        "buk_raw",
        "-buk",
        "buk-",
        "buk..raw",
        "10.1.2.3",
        "xn--buk",
        "sthree-buk",
        "ap-abc-s3alias",
        "olap--ol-s3",
        "mfzwi23gnjvgw.mrap",
        &"b".repeat(64),
    ] {
        assert!(!is_valid_bucket_name(bad), "{bad}");
    }
}

#[test]
fn error_messages_never_echo_the_request() {
    let hosts = hosts();
    let got = target(&hosts, "evil<script>.example", "/x").expect_err("unknown host");
    assert!(!got.to_string().contains("evil"));
    let got = parse_copy_source("<script>/x").expect_err("bad source");
    assert!(!got.to_string().contains("script"));
}

#[test]
fn query_names_are_read_exactly_and_other_spellings_refused() {
    let names = BUCKET_SUBRESOURCES
        .iter()
        .map(|s| s.name)
        .chain(OTHER_NAMES.iter().copied());
    for (at, name) in names.enumerate() {
        let bit = 1 << at;
        assert!(name.len() <= MAX_NAME, "{name} is longer than MAX_NAME");
        assert_eq!(spelling(bit), name);
        assert_eq!(
            query_name(name.as_bytes()),
            QueryName::Selector(bit),
            "{name}"
        );
        let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            query_name(encoded.as_bytes()),
            QueryName::Selector(bit),
            "{name}"
        );
        let upper = name.to_ascii_uppercase();
        assert_eq!(query_name(upper.as_bytes()), QueryName::NearMiss, "{upper}");
    }
    for sub in BUCKET_SUBRESOURCES {
        assert!(sub.get.is_some(), "{} names no GET operation", sub.name);
    }
    assert_eq!(query_name(b"versionId"), QueryName::Other);
    assert_eq!(query_name(b"uploadz"), QueryName::Other);
    assert_eq!(query_name("a".repeat(100).as_bytes()), QueryName::Other);
    assert_eq!(query_name("%C5%BFelect".as_bytes()), QueryName::NearMiss);
    assert_eq!(
        query_name(b"x-AMZ-credential"),
        QueryName::Credential(Param::V4Credential)
    );
    assert_eq!(
        query_name(b"X-Amz-Security-Token"),
        QueryName::Credential(Param::SecurityToken)
    );
}

#[test]
fn object_lock_headers_are_noted_on_any_operation() {
    let hosts = hosts();
    let classify_with = |method: &Method, target: &str, headers: &str| {
        request(&hosts, method, "127.0.0.1", target, &header_map(headers))
            .expect("classify")
            .object_lock
    };
    for (method, target, headers) in [
        (
            Method::PUT,
            "/buk-aiml-lab/x",
            "x-amz-object-lock-mode=COMPLIANCE",
        ),
        (
            Method::PUT,
            "/buk-aiml-lab/x",
            "X-Amz-Object-Lock-Retain-Until-Date=2099-01-01T00:00:00Z",
        ),
        (
            Method::PUT,
            "/buk-aiml-lab/x",
            "x-amz-copy-source=buk-aiml-lab/y|x-amz-object-lock-legal-hold=ON",
        ),
        (
            Method::POST,
            "/buk-aiml-lab/x?uploads",
            "x-amz-object-lock-mode=GOVERNANCE",
        ),
        (
            Method::PUT,
            "/buk-aiml-lab",
            "x-amz-bucket-object-lock-enabled=true",
        ),
    ] {
        assert!(
            classify_with(&method, target, headers),
            "{method} {target} {headers}"
        );
    }
    assert!(!classify_with(
        &Method::PUT,
        "/buk-aiml-lab/x",
        "x-amz-meta-object-lock-mode=x"
    ));
    assert!(!classify_with(&Method::PUT, "/buk-aiml-lab/x", "-"));
}

#[test]
fn grants_beyond_the_bucket_owner_are_named() {
    let put = Action::new("PutObject", crate::classify::Category::Upload);
    let put_acl = Action::new("PutObjectAcl", crate::classify::Category::Upload);
    let with = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    };
    for ok in [
        vec![],
        vec![("x-amz-acl", "private")],
        vec![("x-amz-acl", "bucket-owner-full-control")],
        vec![("content-length", "0"), ("x-amz-acl", "private")],
    ] {
        assert_eq!(public_grant(&put_acl, &with(&ok)), None, "{ok:?}");
    }
    for refused in [
        vec![("x-amz-acl", "public-read")],
        vec![("x-amz-acl", "public-read-write")],
        vec![("x-amz-acl", "authenticated-read")],
        vec![("x-amz-acl", "bucket-owner-read")],
        vec![("x-amz-acl", "Private")],
        vec![("x-amz-acl", "private"), ("x-amz-acl", "public-read")],
        vec![(
            "x-amz-grant-read",
            "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"",
        )],
        vec![("x-amz-grant-full-control", "id=\"0123\"")],
        vec![("x-amz-grant-write-acp", "emailAddress=\"x@example.com\"")],
    ] {
        assert!(public_grant(&put, &with(&refused)).is_some(), "{refused:?}");
    }
    // An ACL body on PutObjectAcl; a body on PutObject is just the object.
    let body = with(&[("content-length", "300")]);
    assert!(public_grant(&put_acl, &body).is_some());
    assert_eq!(public_grant(&put, &body), None);
}
