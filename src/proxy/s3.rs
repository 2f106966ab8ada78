//! The S3 data path: parse bucket, key and operation; attribute the signature's access key
//! (or, for temporary credentials, the client's network); inspect the few bucket-configuration bodies the rules depend
//! on; decide with the bucket rules; record; and forward *unchanged* — the Host the client
//! signed (pinned: the authority the request was decided on, also when the client sent it
//! only as h2's `:authority` or an absolute-form target), raw path, query, every header and
//! the body — because any change breaks the SigV4 signature.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::body::{ProxyBody, ResponseBody};
use super::headers::{set_forwarded_keep_host, strip_console_set_cookies, strip_hop_by_hop};
use super::respond::{refusal_response_in, Dialect, Refusal};
use super::{
    continue_gate, log_decision, open_on_continue, Exchange, ForwardBody, MAX_INSPECTED_BODY,
};
use crate::audit::{CredentialInfo, S3AssetInfo};
use crate::classify::s3 as s3c;
use crate::classify::s3_body::{self, ConfigVerdict};
use crate::identity::s3::KeyClaim;
use crate::policy::s3::{decide, BucketRequest, Buckets};
use crate::policy::Effect;

/// S3 error bodies are small; a larger one is passed on without reading its code.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What the trail records about an S3 request beyond the common fields.
#[derive(Debug, Default)]
pub struct S3Record {
    pub bucket: Option<String>,
    pub key: Option<String>,
    pub copy_source: Option<String>,
    pub access_key: Option<(String, &'static str, bool)>,
    /// The caller's workspace (from its key or its network).
    pub workspace: Option<String>,
    /// The keys a `DeleteObjects` names.
    pub keys: Option<Vec<String>>,
}

impl S3Record {
    pub fn asset(&self) -> S3AssetInfo<'_> {
        S3AssetInfo {
            bucket: self.bucket.as_deref(),
            key: self.key.as_deref(),
            copy_source: self.copy_source.as_deref(),
            keys: self.keys.as_deref(),
        }
    }

    pub fn credential(&self) -> Option<CredentialInfo<'_>> {
        self.access_key
            .as_ref()
            .map(|(id, scheme, temporary)| CredentialInfo {
                access_key: id,
                scheme,
                temporary: *temporary,
            })
    }
}

pub(super) async fn pipeline(x: &mut Exchange<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    x.dialect = Dialect::S3;
    let mut record = S3Record::default();
    let Some(s3) = x.gw.s3.as_ref() else {
        return x
            .refuse(
                Refusal::Forbidden,
                "route.unknown_host",
                "S3 is not configured",
            )
            .await;
    };

    // ---- what: bucket, key, operation ----
    let target = match s3c::target(&s3.hosts, &x.host, req.uri().path()) {
        Ok(t) => t,
        Err(e @ (s3c::S3Error::UnmappedAccessPoint | s3c::S3Error::AccessPointAlias)) => {
            x.s3 = Some(record);
            return x
                .refuse(
                    Refusal::Forbidden,
                    "buckets.unknown",
                    format!("{e}; only access points mapped to a listed bucket are routed"),
                )
                .await;
        }
        Err(e) => {
            x.s3 = Some(record);
            return x
                .refuse(
                    Refusal::BadRequest,
                    "request.unnormalisable",
                    format!("the S3 request target cannot be read unambiguously: {e}"),
                )
                .await;
        }
    };
    record.bucket = target.bucket.clone();
    record.key = target.key.clone();
    let class = match s3c::classify(&x.method, &target, req.uri().query(), req.headers()) {
        Ok(c) => c,
        Err(e) => {
            x.s3 = Some(record);
            return x
                .refuse(
                    Refusal::BadRequest,
                    "request.malformed",
                    format!("the S3 operation cannot be read unambiguously: {e}"),
                )
                .await;
        }
    };
    record.copy_source = class.copy_source.as_ref().map(s3c::CopySource::display);
    x.action = Some(class.action);

    // ---- who: the signature's access key, or the network of temporary credentials ----
    let claim = match s3c::access_key(req.headers(), req.uri().query()) {
        Ok(c) => c,
        Err(e) => {
            x.s3 = Some(record);
            return x
                .refuse(
                    Refusal::BadRequest,
                    "request.malformed",
                    format!("the request's credentials are ambiguous: {e}"),
                )
                .await;
        }
    };
    record.access_key = claim
        .as_ref()
        .map(|c| (c.id.clone(), c.scheme.as_str(), c.temporary));
    let key = claim.as_ref().map(|c| KeyClaim {
        id: &c.id,
        session_token: c.session_token,
    });
    let caller = match s3.callers.attribute(key, x.conn.peer.ip()) {
        Ok(caller) => caller,
        Err(unattributed) => {
            x.s3 = Some(record);
            return x
                .refuse(
                    Refusal::Unauthenticated,
                    unattributed.rule(),
                    unattributed.reason(),
                )
                .await;
        }
    };
    record.workspace = caller.workspace.clone();
    x.principal = Some(std::sync::Arc::new(caller.principal.clone()));
    x.s3 = Some(record);
    let bucket = format!("{}@{}", caller.principal.id, x.conn.peer.ip());
    if let Some(refused) = x.over_rate(&caller.principal, &bucket).await {
        return refused;
    }

    // ---- the few bodies the bucket rules read ----
    let (parts, incoming) = req.into_parts();
    let workspace = caller.workspace.as_deref();
    let mut class = class;
    // An ACL body the headers do not announce (h2 need not send Content-Length).
    if class.public_grant.is_none()
        && matches!(class.action.name, "PutObjectAcl" | "PutBucketAcl")
        && !http_body::Body::is_end_stream(&incoming)
    {
        class.public_grant =
            Some("it sets an access control list from its body; set x-amz-acl: private instead");
    }
    if !matches!(
        class.action.name,
        "PutBucketLifecycleConfiguration" | "PutBucketVersioning" | "DeleteObjects"
    ) {
        return decide_and_forward(
            x,
            s3,
            class,
            workspace,
            (None, None),
            parts,
            ForwardBody::Stream(incoming),
        )
        .await;
    }
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let bytes = if encoded {
        None
    } else {
        let collect = Limited::new(incoming, MAX_INSPECTED_BODY).collect();
        match tokio::time::timeout(x.gw.body_timeout, collect).await {
            Ok(Ok(c)) => Some(c.to_bytes()),
            _ => None,
        }
    };
    if class.action.name == "DeleteObjects" {
        // Decided per key, so the keys must be read exactly as S3 will read them; the body
        // is then forwarded byte for byte (its hash may be signed, Content-MD5 or an
        // x-amz-checksum-* must still verify).
        let keys = match bytes.as_deref().map(s3_body::delete_keys) {
            Some(Ok(keys)) => keys,
            Some(Err(why)) => {
                return x
                    .refuse(
                        Refusal::BadRequest,
                        "request.malformed",
                        format!("the DeleteObjects body cannot be read unambiguously: {why}"),
                    )
                    .await
            }
            None => {
                return x
                    .refuse(
                        Refusal::BadRequest,
                        "request.malformed",
                        "the DeleteObjects body could not be read (encoded, larger than 1 MiB or too slow)",
                    )
                    .await
            }
        };
        if let Some(record) = x.s3.as_mut() {
            record.keys = Some(keys.clone());
        }
        let body = ForwardBody::Buffered(bytes.unwrap_or_default());
        return decide_and_forward(x, s3, class, workspace, (None, Some(&keys)), parts, body).await;
    }
    let retention = class
        .bucket
        .as_deref()
        .and_then(|b| s3.buckets.iter().find(|c| c.name == b))
        .map_or(0, |c| c.retention_days);
    let verdict = match &bytes {
        // Unreadable: the rules deny, so the empty body below is never forwarded.
        None => ConfigVerdict::Malformed(
            "the configuration body could not be read (encoded, larger than 1 MiB or too slow)",
        ),
        Some(b) if class.action.name == "PutBucketVersioning" => s3_body::versioning_keeps(b),
        Some(b) => s3_body::lifecycle_keeps_retention(b, retention),
    };
    let body = ForwardBody::Buffered(bytes.unwrap_or_default());
    decide_and_forward(x, s3, class, workspace, (Some(verdict), None), parts, body).await
}

async fn decide_and_forward(
    x: &mut Exchange<'_>,
    s3: &super::S3Gateway,
    class: s3c::S3Classification,
    workspace: Option<&str>,
    (config_body, delete_keys): (Option<ConfigVerdict>, Option<&[String]>),
    mut parts: http::request::Parts,
    body: ForwardBody,
) -> Response<ProxyBody> {
    let copy_source = class
        .copy_source
        .as_ref()
        .map(|c| (c.bucket.as_deref().unwrap_or(""), c.key.as_str()));
    let list_prefix: Option<String> = parts.uri.query().and_then(|q| {
        crate::classify::text::form_pairs(q.as_bytes())
            .find(|(name, _)| name == "prefix")
            .map(|(_, value)| value.into_owned())
    });
    let request = BucketRequest {
        action: &class.action,
        access: class.access,
        bucket: class.bucket.as_deref(),
        key: class.key.as_deref(),
        copy_source,
        config_body,
        list_prefix: list_prefix.as_deref(),
        object_lock: class.object_lock,
        delete_keys,
        public_grant: class.public_grant,
    };
    let Some(principal) = x.principal.clone() else {
        return x
            .refuse(
                Refusal::Unauthenticated,
                "identity.s3_unknown_caller",
                "the caller is unknown",
            )
            .await;
    };
    let decision = decide(
        &x.gw.rules,
        &principal,
        workspace,
        &Buckets { list: &s3.buckets },
        &request,
        &x.gw.exceptions.load().at(crate::exceptions::now_ms()),
    );
    if decision.effect == Effect::Deny {
        return x.refuse_with(Refusal::Forbidden, &decision).await;
    }
    if let Err(e) = x.record(&decision).await {
        return x.unrecordable(e);
    }
    log_decision(x, &decision);

    // ---- forward exactly what the client signed ----
    let mut target = String::with_capacity(parts.uri.path().len() + 64);
    target.push_str(s3.upstream.scheme_str());
    target.push_str("://");
    target.push_str(&s3.upstream.authority);
    target.push_str(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let Ok(uri) = target.parse::<Uri>() else {
        return refusal_response_in(
            Dialect::S3,
            Refusal::BadRequest,
            "request.malformed",
            "the request target cannot be forwarded",
            &x.request_id,
        );
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, false);
    if set_forwarded_keep_host(
        &mut parts.headers,
        &x.conn.peer_ip,
        if x.conn.tls { "https" } else { "http" },
        &x.host,
        &x.request_id,
    )
    .is_err()
    {
        return refusal_response_in(
            Dialect::S3,
            Refusal::BadRequest,
            "request.malformed",
            "the request's authority cannot be forwarded as Host",
            &x.request_id,
        );
    }
    let completion = x.completion();
    let gate = continue_gate(&parts);
    let upstream_body = body.into_upstream(&completion, gate.clone());
    let mut upstream_req = Request::from_parts(parts, upstream_body);
    open_on_continue(&mut upstream_req, &gate);
    let sent = Instant::now();
    let result = tokio::time::timeout(
        x.gw.upstream_timeout,
        super::pooled::send(&s3.client, upstream_req),
    )
    .await;
    if let Some(gate) = &gate {
        gate.abort_if_closed();
    }
    let mut completion = completion;
    let upstream_us = sent.elapsed().as_micros() as u64;
    completion.upstream_us = Some(upstream_us);
    let metrics = &x.gw.shared().metrics;
    match &result {
        Ok(Ok(_)) => metrics.upstream_duration().observe_us(upstream_us),
        Ok(Err(e)) => metrics.upstream_error(e.kind()),
        Err(_) => metrics.upstream_error(crate::metrics::UpstreamError::Timeout),
    }
    let response = match result {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => {
            let (refusal, rule, why, error) = if result.is_err() {
                (
                    Refusal::GatewayTimeout,
                    "upstream.timeout",
                    "the S3 upstream did not answer in time",
                    "the upstream did not answer in time",
                )
            } else {
                (
                    Refusal::BadGateway,
                    "upstream.failed",
                    "the S3 upstream could not be reached",
                    "the upstream could not be reached or failed",
                )
            };
            completion.error = Some(error);
            let r = refusal_response_in(Dialect::S3, refusal, rule, why, &x.request_id);
            completion.status = r.status().as_u16();
            return r;
        }
    };
    completion.status = response.status().as_u16();
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    strip_console_set_cookies(&mut parts.headers);
    if !parts.status.is_client_error() && !parts.status.is_server_error() {
        return Response::from_parts(
            parts,
            ResponseBody::new(incoming, completion).boxed_unsync(),
        );
    }
    // An error: read its (small) body for the upstream's verdict, then pass it on as is.
    let small = http_body::Body::size_hint(&incoming)
        .upper()
        .is_some_and(|n| n <= MAX_ERROR_BODY as u64);
    if !small {
        return Response::from_parts(
            parts,
            ResponseBody::new(incoming, completion).boxed_unsync(),
        );
    }
    let bytes = match Limited::new(incoming, MAX_ERROR_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            completion.error = Some("the upstream error body could not be read");
            return Response::from_parts(
                parts,
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
        }
    };
    completion.upstream_error = s3_error_code(&bytes);
    completion.bytes_out = bytes.len() as u64;
    completion.error = None;
    drop(completion);
    if let Ok(v) = HeaderValue::from_str(&bytes.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, v);
    }
    Response::from_parts(
        parts,
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// The `<Code>` of an S3 XML error body.
pub fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    let code = text[start..end].trim();
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_error_code_is_read_from_the_xml() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error>";
        assert_eq!(
            s3_error_code(body).as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(s3_error_code(b"<Error><Code><script></Code></Error>"), None);
        assert_eq!(s3_error_code(b"not xml"), None);
    }
}
