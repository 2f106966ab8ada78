//! The differential oracle's S3 side: s3s (a real S3 server implementation) reads a request
//! and this module records what it routed — the operation, bucket, key and copy source — so
//! a test can compare it with what the gateway decided on.
//!
//! Shared by `examples/s3s_upstream.rs` (which records to a JSON-lines file), the integration
//! test `tests/s3_oracle.rs` and the fuzz target `fuzz/fuzz_targets/s3_oracle.rs`, each of
//! which includes this file with `#[path]` (s3s is a dev-dependency, so it cannot live in the
//! library).
//!
//! The record is taken in s3s's `S3Access::check`, which s3s calls after it has parsed the
//! host and path, verified the signature and resolved the operation, and before it reads the
//! operation's input: exactly s3s's reading of the request, before anything executes.

#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use gatehouse::classify::s3::{classify, target, S3Hosts};
use http::{HeaderMap, Method};
use s3s::access::{S3Access, S3AccessContext};
use s3s::host::{S3Host, VirtualHost};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

/// What s3s routed one request to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Routed {
    /// s3s's operation name (`S3Operation::name`), an AWS operation name.
    pub op: String,
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// The copy source as s3s's own `CopySource::parse` reads `x-amz-copy-source`, in the
    /// trail's spelling (`CopySource::display`): `bucket/key?versionId=v`,
    /// `accesspoint:name/key`; `!invalid` when s3s cannot parse it.
    pub copy_source: Option<String>,
    /// `x-request-id` (the gateway's, forwarded) or else `x-amz-request-id`, to join on.
    pub request_id: Option<String>,
}

/// Records every routed request, in memory and optionally as JSON lines to a file.
#[derive(Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Routed>>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
    /// Let anonymous requests through the access check (in-process comparison with a
    /// do-nothing S3, where nothing executes). Off, the check is s3s's default one: a
    /// request without verified credentials is denied.
    allow_anonymous: bool,
}

impl Recorder {
    /// Denies anonymous requests after recording them, as s3s's default access check does.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Also appends one JSON line per routed request to `path`.
    pub fn to_file(path: &std::path::Path) -> std::io::Result<Recorder> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Recorder {
            file: Some(Arc::new(Mutex::new(file))),
            ..Recorder::default()
        })
    }

    /// For an S3 that executes nothing: anonymous requests pass the check too.
    pub fn allowing_anonymous() -> Recorder {
        Recorder {
            allow_anonymous: true,
            ..Recorder::default()
        }
    }

    pub fn seen(&self) -> Vec<Routed> {
        self.seen.lock().unwrap().clone()
    }

    pub fn take(&self) -> Vec<Routed> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn record(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let (bucket, key) = match cx.s3_path() {
            S3Path::Root => (None, None),
            S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
        };
        let header = |name: &str| {
            cx.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let copy_source = header("x-amz-copy-source").map(|value| copy_source(&value));
        let routed = Routed {
            op: cx.s3_op().name().to_owned(),
            bucket,
            key,
            copy_source,
            request_id: header("x-request-id").or_else(|| header("x-amz-request-id")),
        };
        if let Some(file) = &self.file {
            let mut line = serde_json::to_string(&routed).expect("a record serialises");
            line.push('\n');
            // A record that cannot be written must not pass silently: the oracle would then
            // see "forwarded, not routed" and blame the gateway.
            file.lock()
                .unwrap()
                .write_all(line.as_bytes())
                .map_err(|e| s3_error!(InternalError, "oracle record: {e}"))?;
        }
        self.seen.lock().unwrap().push(routed);
        if self.allow_anonymous || cx.credentials().is_some() {
            Ok(())
        } else {
            // s3s's default check (`access::default_check`), which setting an access hook
            // replaces: keep the upstream's behaviour exactly.
            Err(s3_error!(AccessDenied, "Signature is required"))
        }
    }
}

/// s3s's reading of `x-amz-copy-source`, in the trail's spelling.
pub fn copy_source(value: &str) -> String {
    use s3s::dto::CopySource;
    let (mut out, version) = match CopySource::parse(value) {
        Ok(CopySource::Bucket {
            bucket,
            key,
            version_id,
        }) => (format!("{bucket}/{key}"), version_id),
        Ok(CopySource::AccessPoint {
            access_point_name,
            key,
            version_id,
            ..
        }) => (format!("accesspoint:{access_point_name}/{key}"), version_id),
        Ok(CopySource::Outpost {
            outpost_id,
            key,
            version_id,
            ..
        }) => (format!("outpost:{outpost_id}/{key}"), version_id),
        Err(_) => return "!invalid".to_owned(),
    };
    if let Some(version) = version {
        out.push_str("?versionId=");
        out.push_str(&version);
    }
    out
}

// `S3Access` is an `#[async_trait]` trait; written out by hand so that the tests need no
// `async-trait` dependency of their own. The check does no I/O worth awaiting.
impl S3Access for Recorder {
    fn check<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        cx: &'life1 mut S3AccessContext<'life2>,
    ) -> Pin<Box<dyn Future<Output = S3Result<()>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let result = self.record(cx);
        Box::pin(std::future::ready(result))
    }
}

/// The endpoint configuration s3s is given: which hosts are the service itself (path style),
/// under which domains a host's first label is a bucket (virtual-hosted), and which
/// access-point hosts stand for which bucket. This is configuration both sides share, as an
/// S3 deployment's DNS names are; everything after it — the path, the query, the operation —
/// is s3s's own reading.
///
/// Hosts compare as DNS names do: without case, port or trailing dot. A host that is none of
/// these is read as s3s's own host parsers read it (`SingleDomain`/`MultiDomain`): the whole
/// name is the bucket (S3's CNAME form).
#[derive(Debug, Clone, Default)]
pub struct OracleHost {
    /// Path-style endpoints (and `bucket.vpce-…` interface endpoint names).
    pub path_hosts: Vec<String>,
    /// `X.domain` names bucket `X`.
    pub domains: Vec<String>,
    /// Access-point host → bucket.
    pub access_points: Vec<(String, String)>,
}

impl OracleHost {
    /// From the gateway's `[s3] hosts` spelling: `name` is path style, `*.domain` is
    /// virtual-hosted under `domain`; `*.vpce-…` also makes `bucket.vpce-…` path style, as
    /// AWS names interface endpoints.
    pub fn from_gateway_hosts(hosts: &[&str], access_points: &[(&str, &str)]) -> OracleHost {
        let mut out = OracleHost::default();
        for host in hosts {
            let host = host.trim_start_matches('[').replace(']', "");
            match host.strip_prefix("*.") {
                Some(domain) => {
                    if domain.starts_with("vpce-") {
                        // `bucket.vpce-…` is the endpoint, `X.bucket.vpce-…` names bucket X.
                        out.path_hosts.push(format!("bucket.{domain}"));
                        out.domains.push(format!("bucket.{domain}"));
                    }
                    out.domains.push(domain.to_ascii_lowercase());
                }
                None => out.path_hosts.push(host.to_ascii_lowercase()),
            }
        }
        // The most specific domain wins, as an endpoint under another's name is its own.
        out.domains.sort_by_key(|d| std::cmp::Reverse(d.len()));
        out.access_points = access_points
            .iter()
            .map(|(h, b)| (h.to_ascii_lowercase(), (*b).to_owned()))
            .collect();
        out
    }
}

/// `host[:port]` → the lower-cased name without port, brackets or trailing dot.
fn dns_name(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl S3Host for OracleHost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = dns_name(host);
        if let Some((_, bucket)) = self.access_points.iter().find(|(h, _)| *h == name) {
            return Ok(VirtualHost::new(name.clone()).with_bucket(bucket.clone()));
        }
        if self.path_hosts.contains(&name) {
            return Ok(VirtualHost::new(name));
        }
        for domain in &self.domains {
            if let Some(label) = name
                .strip_suffix(domain.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .filter(|label| !label.is_empty())
            {
                return Ok(VirtualHost::new(domain.clone()).with_bucket(label.to_owned()));
            }
        }
        if name.is_empty() {
            return Err(s3_error!(InvalidRequest, "Invalid host header"));
        }
        Ok(VirtualHost::new(name.clone()).with_bucket(name))
    }
}

/// An S3 that executes nothing: every operation is s3s's default `NotImplemented`. With
/// [`Recorder::allowing_anonymous`] it lets s3s route unsigned requests with no side effect.
pub struct Nothing;

impl s3s::S3 for Nothing {}

/// s3s's reading of a request, or why it would not read it.
pub type Reading = Result<Routed, String>;

/// s3s in-process, without sockets: it parses each request and the recorder takes its route.
pub struct InProcess {
    service: s3s::service::S3Service,
    recorder: Recorder,
}

impl InProcess {
    pub fn new(host: OracleHost) -> InProcess {
        let recorder = Recorder::allowing_anonymous();
        let mut builder = s3s::service::S3ServiceBuilder::new(Nothing);
        builder.set_host(host);
        // s3s runs the access check only when an authentication provider is set; requests
        // here are unsigned, so the key is never used.
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            "AKIAORACLEUNUSED0000",
            "unused",
        ));
        builder.set_access(recorder.clone());
        InProcess {
            service: builder.build(),
            recorder,
        }
    }

    /// What s3s routed `req` to, or the S3 error code it answered with instead.
    pub async fn route(&self, req: http::Request<s3s::Body>) -> Reading {
        use http_body_util::BodyExt;
        self.recorder.take();
        let answer = self.service.call(req).await;
        if let Some(routed) = self.recorder.take().pop() {
            return Ok(routed);
        }
        let response = answer.map_err(|e| format!("s3s: {e:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        let code = body
            .split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map_or("", |(code, _)| code);
        Err(format!("{status} {code}"))
    }
}

// ---- the comparison ----

/// Operations the gateway and s3s name differently: `(ours, s3s's, why)`. Every row is
/// deliberate: a pair not listed here, with different names, is a disagreement. Empty: s3s
/// 0.14.1 uses AWS's operation names, as we do, for every operation both know.
pub const SAME_OPERATION: &[(&str, &str, &str)] = &[];

/// Where s3s 0.14.1 reads a request differently from S3 (and from us) for a reason of its
/// own, the comparison names the reason instead of failing. Each is checked narrowly: the
/// exact pair of readings, nothing broader.
pub fn known_difference(
    ours: &Routed,
    theirs: &Reading,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let theirs_op = theirs.as_ref().map(|r| r.op.as_str());
    let refused = |code: &str| matches!(theirs, Err(e) if e.ends_with(code));
    match ours.op.as_str() {
        // s3s's S3 model predates the S3 Metadata configuration API (2025): it does not know
        // `metadataConfiguration` and ignores it, reading the bare bucket operation. AWS S3
        // knows it; an older S3-compatible upstream would list (GET) or delete the bucket
        // (DELETE) — reported on issue 15.
        "GetBucketMetadataConfiguration" if theirs_op == Ok("ListObjects") => {
            Some("s3s predates GetBucketMetadataConfiguration: reads ListObjects")
        }
        "DeleteBucketMetadataConfiguration" if theirs_op == Ok("DeleteBucket") => {
            Some("s3s predates DeleteBucketMetadataConfiguration: reads DeleteBucket")
        }
        "CreateBucketMetadataConfiguration" if refused("NotImplemented") => {
            Some("s3s predates CreateBucketMetadataConfiguration: refuses it")
        }
        // AWS documents `POST /key?select&select-type=2`; s3s routes only that, and we read
        // `?select` alone as SelectObjectContent too. Lenient but not a bypass: the strictest
        // class an object POST has (read_data) and the server refuses the request.
        "SelectObjectContent"
            if *method == Method::POST
                && !query.split('&').any(|p| p == "select-type=2")
                && refused("NotImplemented") =>
        {
            Some("`?select` without `select-type=2`: s3s refuses it")
        }
        // `Multipart/Form-Data ;boundary=y` is a valid media type (RFC 9110 allows spaces
        // before `;`), which we read as a form upload; s3s's MIME parser does not, so it
        // sees a bare `POST /bucket`, which it refuses. Not a bypass: refused upstream.
        "PostObject"
            if headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains(" ;"))
                && refused("NotImplemented") =>
        {
            Some("s3s's MIME parser refuses whitespace before `;`")
        }
        _ => None,
    }
}

/// Our reading, in the oracle's terms.
pub fn ours(
    hosts: &S3Hosts,
    method: &Method,
    authority: &str,
    raw_target: &str,
    headers: &HeaderMap,
) -> Option<Routed> {
    // As the gateway reads it (`proxy::s3`): the path and query of the parsed request
    // target, so a raw `#…` fragment is not part of either.
    let uri: http::Uri = raw_target.parse().ok()?;
    let target = target(hosts, authority, uri.path()).ok()?;
    let class = classify(method, &target, uri.query(), headers).ok()?;
    Some(Routed {
        op: class.action.name.to_string(),
        bucket: class.bucket,
        key: class.key,
        copy_source: class.copy_source.as_ref().map(|c| c.display()),
        request_id: None,
    })
}

/// `None` when the two readings agree; else what differs.
pub fn disagreement(ours: &Routed, theirs: &Reading) -> Option<String> {
    let theirs = match theirs {
        Ok(theirs) => theirs,
        Err(e) => return Some(format!("we read {ours:?}; s3s refused it: {e}")),
    };
    let same_op = ours.op == theirs.op
        || SAME_OPERATION
            .iter()
            .any(|(a, b, _)| *a == ours.op && *b == theirs.op);
    let same = same_op
        && ours.bucket == theirs.bucket
        && ours.key == theirs.key
        && ours.copy_source == theirs.copy_source;
    (!same).then(|| format!("we read {ours:?}; s3s routed {theirs:?}"))
}
