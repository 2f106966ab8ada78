//! Helpers shared by the fuzz targets: the fixtures' text formats (tab-separated fields,
//! `name=value|…` headers), read leniently so any input reaches the code under test, and the
//! re-spellings the properties compare readings across.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The input as text, or `None` (the readers under test take `&str`, as hyper hands them).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Tab-separated fields, as in tests/fixtures/*.tsv.
pub fn fields(line: &str) -> Vec<&str> {
    line.split('\t').collect()
}

/// `path?query` split as hyper splits a request target.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// A method as hyper would accept it; anything else reads as GET.
pub fn method(field: &str) -> http::Method {
    http::Method::from_bytes(field.as_bytes()).unwrap_or(http::Method::GET)
}

/// `name=value|name=value` (the fixtures' spelling), `-` for none; pairs that are not valid
/// header names or values are skipped, as hyper would never deliver them.
pub fn header_map(field: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for pair in field.split('|').filter(|p| *p != "-") {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// `raw` with literal characters percent-encoded (every one when `stride` is 1, every other
/// one when 2, …), leaving `%XX` escapes and the characters in `keep` as they are: a server
/// that decodes once must read both spellings the same.
pub fn encode_literals(raw: &str, keep: &[char], stride: usize) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    let mut chars = raw.char_indices().peekable();
    let mut nth = 0usize;
    while let Some((at, c)) = chars.next() {
        if c == '%' {
            // An escape (or a broken one) is copied as it is, with the two bytes after it.
            out.push(c);
            for _ in 0..2 {
                if let Some((_, next)) = chars.next_if(|(_, n)| n.is_ascii_hexdigit()) {
                    out.push(next);
                }
            }
            continue;
        }
        nth += 1;
        if keep.contains(&c) || nth % stride.max(1) != 0 {
            out.push(c);
            continue;
        }
        for byte in raw[at..at + c.len_utf8()].bytes() {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A query with its `&`-separated pairs in reverse order.
pub fn reversed_query(query: &str) -> String {
    query.rsplit('&').collect::<Vec<_>>().join("&")
}
