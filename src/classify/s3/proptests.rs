use http::header::{HeaderMap, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};
use proptest::prelude::*;

use super::tests::{header_map, hosts, request};
use super::*;

/// Path pieces, tricks included, so generated keys hit encodings, dot segments and errors.
const PIECES: &[&str] = &[
    "data", "x.csv", "/", "//", ".", "..", "%2e", "%2F", "%2f", "%2541", "%25", "%41", "%zz", "%4",
    "%00", "%0A", "%C3%A9", "%C0%AF", "%FF", "é", "+", "%2B", "%20", ";a=b", "?", "~", "\\", "",
];

const BUCKETS: &[&str] = &["buk-aiml-lab", "buk-raw", "my.dotted.bucket", "b01"];

/// botocore's quoting of a copy source: everything but unreserved characters and `/`.
const COPY_SOURCE_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Encodes just enough for a key to sit in a path: `%` itself, and what would end the path.
const ONCE: &AsciiSet = &CONTROLS.add(b'%').add(b'?').add(b'#');

fn key_suffix() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..8)
        .prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn any_method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::DELETE,
    ])
}

/// Queries that select operations, and some that do not.
fn any_query() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("acl"),
        Some("tagging"),
        Some("uploads"),
        Some("uploadId=a&partNumber=1"),
        Some("uploadId=a"),
        Some("list-type=2"),
        Some("versions"),
        Some("lifecycle"),
        Some("select&select-type=2"),
        Some("delete"),
        Some("restore"),
        Some("torrent"),
        Some("versionId=3"),
    ])
}

/// Parameters that qualify an operation but never choose it.
const UNRELATED: &[&str] = &[
    "prefix=a%2F",
    "delimiter=/",
    "max-keys=10",
    "encoding-type=url",
    "versionId=3",
    "x-id=GetObject",
    "response-content-type=text%2Fplain",
    "X-Amz-Date=20260101T000000Z",
    "continuation-token=abc",
    "part-number-marker=2",
    "select-type=2",
    "",
];

/// Any key S3 accepts: no control characters, up to a few dozen characters.
fn any_key() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,40}"
}

proptest! {
    // Failures are not persisted to files: a minimal failing input belongs in the fixtures.
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// `s3.{region}/bucket/…` and `bucket.s3.{region}/…` are the same request: same bucket,
    /// same key, same operation, or the same refusal.
    #[test]
    fn path_style_and_virtual_hosted_forms_agree(
        bucket in prop::sample::select(BUCKETS),
        suffix in key_suffix(),
        method in any_method(),
        query in any_query(),
    ) {
        let hosts = hosts();
        let path_style = format!("/{bucket}{suffix}");
        let virtual_host = format!("{bucket}.s3.eu-west-2.amazonaws.com");
        let a = target(&hosts, "s3.eu-west-2.amazonaws.com", &path_style);
        let b = target(&hosts, &virtual_host, &suffix);
        prop_assert_eq!(&a, &b, "path style {} vs virtual-hosted {}", path_style, suffix);
        if let (Ok(a), Ok(b)) = (a, b) {
            let headers = HeaderMap::new();
            prop_assert_eq!(
                classify(&method, &a, query, &headers),
                classify(&method, &b, query, &headers)
            );
        }
    }

    /// The key is the path decoded exactly once: encoding a key (even one that looks
    /// encoded, `%41`) once gives it back unchanged, and encoding it twice gives back the
    /// once-encoded form.
    #[test]
    fn keys_are_decoded_exactly_once(key in any_key(), bucket in prop::sample::select(BUCKETS)) {
        let hosts = hosts();
        let once: String = utf8_percent_encode(&key, ONCE)
            .collect();
        let got = target(&hosts, "127.0.0.1", &format!("/{bucket}/{once}"));
        prop_assert_eq!(got.map(|t| t.key), Ok(Some(key.clone())));
        let twice: String = utf8_percent_encode(&once, NON_ALPHANUMERIC).collect();
        let got = target(&hosts, "127.0.0.1", &format!("/{bucket}/{twice}"));
        prop_assert_eq!(got.map(|t| t.key), Ok(Some(once)));
    }

    /// A literal `%XX` in a key survives: `%2541` is the key `%41`, never `A`.
    #[test]
    fn encoded_percent_stays_literal(prefix in "[a-z/]{0,8}", hex in "[0-9A-F]{2}") {
        let hosts = hosts();
        let got = target(&hosts, "buk-raw.s3.eu-west-2.amazonaws.com", &format!("/{prefix}%25{hex}"))
            .expect("valid path");
        prop_assert_eq!(got.key, Some(format!("{prefix}%{hex}")));
    }

    /// Parameters that do not choose an operation never change the one chosen.
    #[test]
    fn unrelated_parameters_never_change_the_operation(
        method in any_method(),
        query in any_query(),
        extra in prop::collection::vec(prop::sample::select(UNRELATED), 0..4),
        object in any::<bool>(),
        front in any::<bool>(),
    ) {
        let hosts = hosts();
        let path = if object { "/buk-raw/x" } else { "/buk-raw" };
        let target = target(&hosts, "127.0.0.1", path).expect("target");
        let headers = HeaderMap::new();
        let base = classify(&method, &target, query, &headers).map(|c| c.action);
        let extra = extra.join("&");
        let joined = match (query, front) {
            (None, _) => extra,
            (Some(q), true) => format!("{extra}&{q}"),
            (Some(q), false) => format!("{q}&{extra}"),
        };
        let got = classify(&method, &target, Some(&joined), &headers).map(|c| c.action);
        prop_assert_eq!(base, got, "query {}", joined);
    }

    /// A copy source quoted the way botocore quotes it parses back to its bucket, key and
    /// version, with or without a leading `/`.
    #[test]
    fn quoted_copy_sources_round_trip(
        bucket in prop::sample::select(BUCKETS),
        key in any_key(),
        version in proptest::option::of("[A-Za-z0-9._+-]{1,16}"),
        slash in any::<bool>(),
    ) {
        let mut value = String::new();
        if slash {
            value.push('/');
        }
        value.extend(utf8_percent_encode(&format!("{bucket}/{key}"), COPY_SOURCE_SAFE));
        if let Some(v) = &version {
            value.push_str("?versionId=");
            value.extend(utf8_percent_encode(v, NON_ALPHANUMERIC));
        }
        let got = parse_copy_source(&value);
        if key.contains("?versionId=") {
            prop_assert_eq!(got, Err(S3Error::BadCopySource));
        } else {
            let got = got.expect("quoted copy source parses");
            prop_assert_eq!(got.bucket.as_deref(), Some(bucket));
            prop_assert_eq!(got.key, key);
            prop_assert_eq!(got.version_id, version);
        }
    }

    /// Each carrier gives back the key id it carries.
    #[test]
    fn every_carrier_yields_its_key_id(id in "[A-Z0-9]{16,24}", carrier in 0..5usize) {
        let scope = format!("{id}/20260101/eu-west-2/s3/aws4_request");
        let (headers, query) = match carrier {
            0 => (
                format!("authorization=AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=ab"),
                None,
            ),
            1 => (
                format!("authorization=AWS4-ECDSA-P256-SHA256 Credential={id}/20260101/s3/aws4_request, SignedHeaders=host, Signature=ab"),
                None,
            ),
            2 => (format!("authorization=AWS {id}:c2ln"), None),
            3 => (
                "-".to_owned(),
                Some(format!(
                    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Signature=ab",
                    utf8_percent_encode(&scope, NON_ALPHANUMERIC)
                )),
            ),
            _ => ("-".to_owned(), Some(format!("AWSAccessKeyId={id}&Signature=c2ln&Expires=1"))),
        };
        let claim = access_key(&header_map(&headers), query.as_deref())
            .expect("parses")
            .expect("a claim");
        prop_assert_eq!(claim.id, id);
    }

    /// Nothing a client sends makes the classifier panic.
    #[test]
    fn arbitrary_requests_never_panic(
        authority in "[a-zA-Z0-9.:\\[\\]-]{0,40}",
        path in "\\PC{0,40}",
        query in proptest::option::of("\\PC{0,40}"),
        copy in "[ -~]{0,30}",
        method in any_method(),
    ) {
        let hosts = hosts();
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&copy) {
            headers.insert("x-amz-copy-source", value);
        }
        let _ = request(&hosts, &method, &authority, &path, &headers);
        if let Ok(t) = target(&hosts, "127.0.0.1", &path) {
            let _ = classify(&method, &t, query.as_deref(), &headers);
        }
        let _ = access_key(&headers, query.as_deref());
        let _ = is_presigned(query.as_deref());
    }
}
