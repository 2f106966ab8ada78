//! The console's HTTP plumbing, pure: forms and query strings, cookies, the headers every
//! page carries, and the cross-site request check.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The session cookie. `__Host-`: the browser only accepts it with `Secure`, `Path=/` and no
/// `Domain`, so no other host and no plain-HTTP page can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-gatehouse-console";
/// What every console cookie's name starts with: the data path drops these (see
/// `proxy::headers::strip_console_cookies`).
pub const COOKIE_PREFIX: &str = "__Host-gatehouse-";
/// Binds a login in progress to the browser that started it (login CSRF): the provider's
/// answer is only taken from the browser holding this cookie.
pub const LOGIN_COOKIE: &str = "__Host-gatehouse-login";

/// What a query value, form value or path segment escapes: all but RFC 3986's unreserved
/// characters (also what the exceptions CLI uses for its URLs).
pub const URL_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, URL_PART).to_string()
}

/// Pairs as `application/x-www-form-urlencoded` (a query string or a form body).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `application/x-www-form-urlencoded` (forms and query strings) into pairs, in order.
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The first value of `name`, if any and not empty.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a `__Host-` cookie: Secure, HttpOnly, SameSite=Lax, Path=/.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    let text =
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0)
}

/// The headers every console answer carries. The pages run no inline script and load
/// nothing from elsewhere; forms may only go to the console itself, and to the identity
/// provider for logout (Chromium applies `form-action` to a form's redirects too).
pub fn secure_headers(headers: &mut HeaderMap, provider_origin: &str) {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self' {provider_origin}; frame-ancestors 'none'; base-uri 'none'"
    );
    let fixed = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on same-origin form
        // posts, and the cross-site check below could not tell them from an attack.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

/// `scheme://host[:port]` of a URL as browsers serialise it in `Origin`: lower-case, without
/// the scheme's default port.
pub fn origin_of(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return String::new();
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return String::new();
    };
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    match uri.port_u16().filter(|p| Some(*p) != default) {
        Some(port) => format!("{scheme}://{}:{port}", host.to_ascii_lowercase()),
        None => format!("{scheme}://{}", host.to_ascii_lowercase()),
    }
}

/// Why a state-changing request was refused as cross-site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossSite {
    FetchMetadata,
    Origin,
    Token,
}

impl CrossSite {
    pub fn explain(self) -> &'static str {
        match self {
            CrossSite::FetchMetadata => "the browser says this request came from another site",
            CrossSite::Origin => "the request does not come from a console page (Origin)",
            CrossSite::Token => "the form's anti-forgery token is missing or is not this session's",
        }
    }
}

/// Every state-changing request must come from a console page in this session's browser:
/// the browser's own `Sec-Fetch-Site` (when sent) and `Origin` say same-origin, and the form
/// carries the session's token (synchronizer token; compared in constant time).
pub fn same_origin_post(
    headers: &HeaderMap,
    console_origin: &str,
    sent_token: Option<&str>,
    session_token: &str,
) -> Result<(), CrossSite> {
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        None | Some(b"same-origin") => {}
        Some(_) => return Err(CrossSite::FetchMetadata),
    }
    if headers.get(header::ORIGIN).map(HeaderValue::as_bytes) != Some(console_origin.as_bytes()) {
        return Err(CrossSite::Origin);
    }
    let sent = sent_token.unwrap_or("").as_bytes();
    let expected = session_token.as_bytes();
    let same = sent.len() == expected.len()
        && sent
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same && !expected.is_empty() {
        Ok(())
    } else {
        Err(CrossSite::Token)
    }
}

pub fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// 303: after a form post the browser fetches the target with GET.
pub fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forms_and_cookies_are_read_as_browsers_write_them() {
        let pairs = parse_form("principal=alice%40bank.example&reason=a+b%26c&empty=&flag");
        assert_eq!(field(&pairs, "principal"), Some("alice@bank.example"));
        assert_eq!(field(&pairs, "reason"), Some("a b&c"));
        assert_eq!(field(&pairs, "empty"), None);
        assert_eq!(field(&pairs, "missing"), None);
        let h = headers(&[
            ("cookie", "a=1; __Host-gatehouse-console=abc"),
            ("cookie", "b=2"),
        ]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "gatehouse-console"), None);
    }

    #[test]
    fn a_session_cookie_is_host_only_secure_and_hidden_from_scripts() {
        let c = set_cookie(SESSION_COOKIE, "v", 60);
        let c = c.to_str().unwrap();
        for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=60"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!c.contains("Domain"));
    }

    #[test]
    fn only_same_origin_posts_with_the_sessions_token_pass() {
        let origin = "https://gw.example:9443";
        let ok = headers(&[("origin", origin), ("sec-fetch-site", "same-origin")]);
        assert_eq!(same_origin_post(&ok, origin, Some("t0k"), "t0k"), Ok(()));
        assert_eq!(
            same_origin_post(&ok, origin, Some("t0x"), "t0k"),
            Err(CrossSite::Token)
        );
        assert_eq!(
            same_origin_post(&ok, origin, None, "t0k"),
            Err(CrossSite::Token)
        );
        assert_eq!(
            same_origin_post(&ok, origin, Some(""), ""),
            Err(CrossSite::Token)
        );
        for site in ["same-site", "cross-site", "none"] {
            let h = headers(&[("origin", origin), ("sec-fetch-site", site)]);
            assert_eq!(
                same_origin_post(&h, origin, Some("t0k"), "t0k"),
                Err(CrossSite::FetchMetadata)
            );
        }
        for other in ["https://evil.example", "null", "https://gw.example:9444"] {
            let h = headers(&[("origin", other)]);
            assert_eq!(
                same_origin_post(&h, origin, Some("t0k"), "t0k"),
                Err(CrossSite::Origin)
            );
        }
        assert_eq!(
            same_origin_post(&HeaderMap::new(), origin, Some("t0k"), "t0k"),
            Err(CrossSite::Origin)
        );
    }

    #[test]
    fn every_answer_forbids_framing_inline_script_and_caching() {
        let mut h = HeaderMap::new();
        secure_headers(&mut h, "https://login.bank.example");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("form-action 'self' https://login.bank.example"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            origin_of("https://gw.example:9443/auth/callback"),
            "https://gw.example:9443"
        );
        assert_eq!(origin_of("https://GW.example:443/cb"), "https://gw.example");
        assert_eq!(origin_of("http://localhost:80/cb"), "http://localhost");
    }
}
