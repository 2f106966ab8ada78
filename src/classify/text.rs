//! Text comparisons shared by the classifiers, tuned to read names the way the most lenient
//! upstream would, so that a spelling the upstream accepts can never slip past a rule.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// Folds `c` to the lowercase ASCII byte a lenient server would take it for, or `None` when it
/// can never be part of an ASCII route word or field name.
///
/// Beyond ASCII case this covers the characters that Unicode case-insensitive comparisons
/// (Java's `equalsIgnoreCase`, Go's `strings.EqualFold` used by `encoding/json`) equate with
/// ASCII letters: `ſ` with `s`, the Kelvin sign with `k`, dotted and dotless `i` with `i`.
pub(crate) fn fold_char(c: char) -> Option<u8> {
    if c.is_ascii() {
        return Some(c.to_ascii_lowercase() as u8);
    }
    match c {
        '\u{017F}' => Some(b's'),
        '\u{212A}' => Some(b'k'),
        '\u{0130}' | '\u{0131}' => Some(b'i'),
        _ => None,
    }
}

/// Whether `text` folds to `lower`, which must be lowercase ASCII.
pub(crate) fn eq_folded(text: &str, lower: &str) -> bool {
    let mut want = lower.bytes();
    for c in text.chars() {
        match (fold_char(c), want.next()) {
            (Some(got), Some(expected)) if got == expected => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// Decodes one `application/x-www-form-urlencoded` name or value: `+` is a space, `%XX` a byte,
/// invalid UTF-8 is replaced rather than refused (the result is only compared or recorded).
pub(crate) fn form_decode(raw: &[u8]) -> Cow<'_, str> {
    if !raw.contains(&b'+') {
        return percent_decode(raw).decode_utf8_lossy();
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    Cow::Owned(percent_decode(&spaced).decode_utf8_lossy().into_owned())
}

/// Splits a query string or form body into decoded `(name, value)` pairs, in order, keeping
/// duplicates: callers choose between "first wins" and "any occurrence" themselves.
pub(crate) fn form_pairs(raw: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    raw.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(at) => (form_decode(&pair[..at]), form_decode(&pair[at + 1..])),
            None => (form_decode(pair), Cow::Borrowed("")),
        })
}

/// The value of one hexadecimal digit, for percent-decoding.
pub(super) fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_equates_what_lenient_servers_equate() {
        assert!(eq_folded("DBFS", "dbfs"));
        assert!(eq_folded("dbf\u{017F}", "dbfs"));
        assert!(eq_folded("\u{212A}ey", "key"));
        assert!(eq_folded("L\u{0130}NKS", "links"));
        assert!(!eq_folded("dbfs", "dbf"));
        assert!(!eq_folded("dbf", "dbfs"));
        assert!(!eq_folded("dbfé", "dbfs"));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode(b"a+b%20c"), "a b c");
        assert_eq!(form_decode(b"%2Ftmp%2Fx"), "/tmp/x");
        assert_eq!(form_decode(b"%zz"), "%zz");
        let pairs: Vec<_> = form_pairs(b"a=1&&b&c=x%3Dy=z")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), String::new()),
                ("c".to_owned(), "x=y=z".to_owned()),
            ]
        );
    }
}
