//! Header hygiene between client and upstream: hop-by-hop headers removed, forwarding
//! headers set by us (never trusted from the client), the request id propagated.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::console::web::COOKIE_PREFIX as CONSOLE_COOKIE_PREFIX;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy ones; never forwarded either way.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (WebSocket hand-off).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            // Never let a client make us drop headers that we set ourselves or rely on.
            if name == header::HOST || name == X_REQUEST_ID || name == header::AUTHORIZATION {
                continue;
            }
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Removes the review console's cookies from a request going upstream. A browser sends a
/// host's cookies to every port of it, so a workspace reached under the console's host name
/// would otherwise receive a console session. Other cookies pass byte for byte.
pub fn strip_console_cookies(headers: &mut HeaderMap) {
    let prefix = CONSOLE_COOKIE_PREFIX.as_bytes();
    let carries_one = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), prefix).is_some());
    if !carries_one {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() || pair.starts_with(prefix) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_bytes(&kept) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Removes an upstream's `Set-Cookie` for a console cookie from its answer: an upstream
/// answering under the console's host name must not replace the console's session.
pub fn strip_console_set_cookies(headers: &mut HeaderMap) {
    let prefix = CONSOLE_COOKIE_PREFIX.as_bytes();
    let is_console = |v: &HeaderValue| v.as_bytes().trim_ascii_start().starts_with(prefix);
    if !headers.get_all(header::SET_COOKIE).iter().any(is_console) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !is_console(v))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Sets the forwarding headers from what the gateway itself saw; any values the client sent
/// are dropped, since the gateway is the edge and cannot vouch for them. `Host` is pinned to
/// `upstream_host`, never left to the HTTP client to fill in from the upstream URL: the
/// upstream must read the request under the authority it was decided for. `client_host` (the
/// authority the client named) goes in `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &'static str,
    client_host: &str,
    upstream_host: &str,
    request_id: &HeaderValue,
) -> Result<(), http::header::InvalidHeaderValue> {
    let pinned = HeaderValue::from_str(upstream_host)?;
    headers.remove(&FORWARDED);
    strip_console_cookies(headers);
    headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(client_host) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    headers.insert(header::HOST, pinned);
    Ok(())
}

/// For S3: the same forwarding headers, and `Host` is the authority the gateway decided on —
/// the client's `Host`, or for a request without one (h2's `:authority`, an HTTP/1.1
/// absolute-form target) that authority, byte for byte as the client signed it (SigV4 signs
/// `host`, port included). Left out, the HTTP client would fill in the upstream's own
/// authority and S3 would read a virtual-hosted request path-style: decided on one bucket,
/// executed on another.
pub fn set_forwarded_keep_host(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &'static str,
    decided_host: &str,
    request_id: &HeaderValue,
) -> Result<(), http::header::InvalidHeaderValue> {
    set_forwarded(
        headers,
        client_ip,
        proto,
        decided_host,
        decided_host,
        request_id,
    )
}

/// A client's `x-request-id` is kept when it is short and printable; otherwise we make one.
pub fn client_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let v = headers.get(&X_REQUEST_ID)?;
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&c));
    ok.then(|| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consoles_cookies_never_go_upstream_and_others_do() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-gatehouse-console=s3cr3t;b=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-gatehouse-login=x"),
        );
        strip_console_cookies(&mut h);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);

        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-gatehouse-console=s3cr3t"),
        );
        strip_console_cookies(&mut only);
        assert!(!only.contains_key(header::COOKIE));

        let mut none = HeaderMap::new();
        none.insert(header::COOKIE, HeaderValue::from_static("session=abc"));
        strip_console_cookies(&mut none);
        assert_eq!(none[header::COOKIE], "session=abc");

        // Bytes that are not UTF-8 in another cookie pass as they came.
        let mut raw = HeaderMap::new();
        raw.insert(
            header::COOKIE,
            HeaderValue::from_bytes(b"__Host-gatehouse-login=x; pref=\xe9t\xe9").unwrap(),
        );
        strip_console_cookies(&mut raw);
        assert_eq!(raw[header::COOKIE].as_bytes(), b"pref=\xe9t\xe9");

        let mut answer = HeaderMap::new();
        answer.append(
            header::SET_COOKIE,
            HeaderValue::from_static("__Host-gatehouse-console=evil; Path=/; Secure"),
        );
        answer.append(header::SET_COOKIE, HeaderValue::from_static("ws=1; Path=/"));
        strip_console_set_cookies(&mut answer);
        let left: Vec<_> = answer.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["ws=1; Path=/"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, host"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::HOST).unwrap(), "a");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn client_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let rid = HeaderValue::from_static("r1");
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("10.0.0.1"),
            "https",
            "a.example",
            "upstream.internal:8443",
            &rid,
        )
        .unwrap();
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert_eq!(h.get("host").unwrap(), "upstream.internal:8443");
        assert!(h.get("forwarded").is_none());
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
        assert_eq!(h.get("x-request-id").unwrap(), "r1");
    }

    #[test]
    fn s3_forwards_the_decided_authority_as_host_even_when_the_client_sent_none() {
        // An h2 request has no Host header: the upstream must still see the decided one.
        let mut h = HeaderMap::new();
        set_forwarded_keep_host(
            &mut h,
            &HeaderValue::from_static("10.0.0.1"),
            "http",
            "Lab.s3.test:9000",
            &HeaderValue::from_static("r1"),
        )
        .unwrap();
        assert_eq!(h.get("host").unwrap(), "Lab.s3.test:9000");
        assert_eq!(h.get_all("host").iter().count(), 1);
    }

    #[test]
    fn request_ids_must_be_tame() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(client_request_id(&h).unwrap(), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("a b\"c"));
        assert!(client_request_id(&h).is_none());
    }
}
