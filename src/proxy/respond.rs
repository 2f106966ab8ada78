//! Errors turned into responses, in one place, in the client's own error format.
//!
//! Databricks clients get `{"error_code": …, "message": …}` so the SDK raises the right
//! exception at once. Statuses are chosen so clients do not retry a policy denial: a deny is
//! always 403 (never 408, 429 or 5xx, which the SDK retries for minutes). A rate limit is the
//! one refusal meant to be retried: 429 with `Retry-After`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::body::ProxyBody;

/// What the gateway answers itself, without the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A policy denial: 403 PERMISSION_DENIED.
    Forbidden,
    /// No or bad credentials: 401 UNAUTHENTICATED.
    Unauthenticated,
    /// Malformed or ambiguous request: 400.
    BadRequest,
    /// The TLS name and the Host disagree: 421.
    Misdirected,
    /// A body that must be inspected is too large: 413.
    TooLarge,
    /// A body that must be inspected did not arrive in time: 408.
    RequestTimeout,
    /// The gateway cannot record or verify right now: 503 (clients may retry).
    Unavailable,
    /// The principal is over its request rate: 429 with `Retry-After` (clients back off).
    TooManyRequests,
    /// The upstream failed: 502.
    BadGateway,
    /// The upstream did not answer in time: 504.
    GatewayTimeout,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_code(self) -> &'static str {
        match self {
            Refusal::Forbidden => "PERMISSION_DENIED",
            Refusal::Unauthenticated => "UNAUTHENTICATED",
            Refusal::BadRequest | Refusal::Misdirected => "BAD_REQUEST",
            Refusal::TooLarge => "RESOURCE_EXHAUSTED",
            Refusal::RequestTimeout => "REQUEST_TIMEOUT",
            Refusal::Unavailable => "TEMPORARILY_UNAVAILABLE",
            // What Databricks itself answers with 429; the SDKs retry it after Retry-After.
            Refusal::TooManyRequests => "REQUEST_LIMIT_EXCEEDED",
            Refusal::BadGateway | Refusal::GatewayTimeout => "BAD_GATEWAY",
        }
    }
}

/// The Databricks-shaped JSON error body.
pub fn databricks_body(refusal: Refusal, rule: &str, reason: &str, request_id: &str) -> Bytes {
    let message = match refusal {
        Refusal::Forbidden => format!(
            "Gatehouse denied this request (rule {rule}): {reason}. Request id: {request_id}"
        ),
        _ => format!("Gatehouse: {reason} (rule {rule}). Request id: {request_id}"),
    };
    let body = serde_json::json!({
        "error_code": refusal.error_code(),
        "message": message,
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": rule,
            "domain": "gatehouse",
            "metadata": {"request_id": request_id},
        }],
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Which client family a refusal is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Databricks SDKs and CLIs: JSON `error_code` / `message`.
    Databricks,
    /// AWS SDKs and CLI: S3's XML `<Error>`.
    S3,
}

impl Refusal {
    fn s3_code(self) -> &'static str {
        match self {
            Refusal::Forbidden | Refusal::Unauthenticated => "AccessDenied",
            Refusal::BadRequest | Refusal::Misdirected => "InvalidRequest",
            Refusal::TooLarge => "EntityTooLarge",
            Refusal::RequestTimeout => "RequestTimeout",
            Refusal::Unavailable => "ServiceUnavailable",
            // A throttling code botocore and the AWS CLI retry with backoff.
            Refusal::TooManyRequests => "SlowDown",
            Refusal::BadGateway => "InternalError",
            Refusal::GatewayTimeout => "RequestTimeout",
        }
    }
}

/// S3's XML error body, so the AWS CLI prints `An error occurred (AccessDenied) …: <message>`.
pub fn s3_body(refusal: Refusal, rule: &str, reason: &str, request_id: &str) -> Bytes {
    let message = match refusal {
        Refusal::Forbidden | Refusal::Unauthenticated => format!(
            "Gatehouse denied this request (rule {rule}): {reason}. Request id: {request_id}"
        ),
        _ => format!("Gatehouse: {reason} (rule {rule}). Request id: {request_id}"),
    };
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
        refusal.s3_code(),
        xml_escape(&message),
        xml_escape(request_id)
    ))
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete error response in the Databricks dialect.
pub fn refusal_response(
    refusal: Refusal,
    rule: &str,
    reason: &str,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    refusal_response_in(Dialect::Databricks, refusal, rule, reason, request_id)
}

/// A complete error response in the client's dialect.
pub fn refusal_response_in(
    dialect: Dialect,
    refusal: Refusal,
    rule: &str,
    reason: &str,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let rid = request_id.to_str().unwrap_or("-");
    let (body, content_type) = match dialect {
        Dialect::Databricks => (
            databricks_body(refusal, rule, reason, rid),
            "application/json",
        ),
        Dialect::S3 => (s3_body(refusal, rule, reason, rid), "application/xml"),
    };
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = match (dialect, refusal) {
        // S3 clients know no 401: an unattributable caller is AccessDenied.
        (Dialect::S3, Refusal::Unauthenticated) => StatusCode::FORBIDDEN,
        _ => refusal.status(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if dialect == Dialect::S3 {
        if let Ok(v) = HeaderValue::from_str(rid) {
            headers.insert("x-amz-request-id", v);
        }
    }
    headers.insert("x-request-id", request_id.clone());
    if refusal == Refusal::Unauthenticated && dialect == Dialect::Databricks {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gatehouse\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_are_xml_with_the_rule_and_request_id_escaped() {
        let body = s3_body(
            Refusal::Forbidden,
            "buckets.raw_blocked",
            "raw <bucket> & co",
            "r-1",
        );
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("<Code>AccessDenied</Code>"));
        assert!(text
            .contains("(rule buckets.raw_blocked): raw &lt;bucket&gt; &amp; co. Request id: r-1"));
        assert!(text.contains("<RequestId>r-1</RequestId>"));
    }
}
