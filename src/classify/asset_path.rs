//! Asset parameters (`?path=…`, `?run_id=…`) → the one value the policy, the exceptions and
//! the trail all see.
//!
//! A download exception lifts a block for an asset prefix, so the asset must be the data the
//! upstream will serve, not a spelling of it: `dbfs:/ok/../../mnt/pii/x` is `dbfs:/mnt/pii/x`.
//! Dot segments and doubled slashes are resolved, as a filesystem (and Hadoop's `Path`) reads
//! them; what two readers could take for different data is refused rather than guessed at: a
//! `..` above the root, a `%XX` left after the parameter's one decoding (a second decoder
//! would see another path), a backslash, control bytes, bytes that are not UTF-8, a leading
//! `//` (a URI reader takes what follows for a host), and a parameter given twice with two
//! values (upstreams disagree on which one counts).

use std::fmt;

use super::text::{eq_folded, hex_value};

/// Why an asset parameter was refused. Shown to clients in a 400: never echoes the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssetPathError {
    /// A `..` that would climb above the root (or above the start of a relative path).
    AboveRoot,
    /// A `\`: some servers treat it as a separator.
    Backslash,
    /// NUL, another C0 control byte, or DEL.
    ControlByte,
    /// A `%XX` left after decoding the parameter once.
    DoubleEncoded,
    /// A `%` not followed by two hex digits in the query itself.
    BadPercentEncoding,
    /// The decoded bytes are not UTF-8 (including overlong forms such as `%C0%AF`).
    InvalidUtf8,
    /// A path starting `//`, which a URI reader takes for `//host/…`.
    Authority,
    /// The parameter appears more than once with different values.
    Repeated,
}

impl AssetPathError {
    fn message(self) -> &'static str {
        match self {
            AssetPathError::AboveRoot => "it climbs above the root",
            AssetPathError::Backslash => "it contains a backslash",
            AssetPathError::ControlByte => "it contains a control character",
            AssetPathError::DoubleEncoded => {
                "it is percent-encoded twice (a %XX remains once decoded)"
            }
            AssetPathError::BadPercentEncoding => "it has a malformed percent-encoding",
            AssetPathError::InvalidUtf8 => "it is not valid UTF-8 once decoded",
            AssetPathError::Authority => "it starts with '//', which names a host",
            AssetPathError::Repeated => "it is given more than once, with different values",
        }
    }
}

impl fmt::Display for AssetPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AssetPathError {}

/// An asset parameter of a request that cannot be read unambiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AssetError {
    /// The parameter's name, as the catalog spells it.
    pub param: &'static str,
    pub why: AssetPathError,
}

impl fmt::Display for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request's '{}' parameter is ambiguous: {}",
            self.param, self.why
        )
    }
}

impl std::error::Error for AssetError {}

/// The value of query parameter `name` (matched as a lenient server would, ignoring case),
/// decoded once, strictly. Every occurrence must carry the same value.
pub(crate) fn param(query: Option<&str>, name: &str) -> Result<Option<String>, AssetPathError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let name = name.to_ascii_lowercase();
    let mut found: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !eq_folded(&decode(key).unwrap_or_default(), &name) {
            continue;
        }
        let value = decode(value)?;
        match &found {
            Some(first) if *first != value => return Err(AssetPathError::Repeated),
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

/// One `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte; a malformed
/// escape or bytes that are not UTF-8 are refused (not replaced, as for names only compared).
fn decode(raw: &str) -> Result<String, AssetPathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let high = bytes.get(at + 1).copied().and_then(hex_value);
                let low = bytes.get(at + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(AssetPathError::BadPercentEncoding);
                };
                out.push((high << 4) | low);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| AssetPathError::InvalidUtf8)
}

/// Resolves a decoded path: empty and `.` segments drop, `..` pops. An absolute path stays
/// absolute (`/` for the root), a relative one relative; a trailing `/` is dropped.
pub fn normalize_asset_path(value: &str) -> Result<String, AssetPathError> {
    for (i, byte) in value.bytes().enumerate() {
        match byte {
            0x00..=0x1F | 0x7F => return Err(AssetPathError::ControlByte),
            b'\\' => return Err(AssetPathError::Backslash),
            b'%' if value
                .as_bytes()
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(|&b| hex_value(b).is_some())) =>
            {
                return Err(AssetPathError::DoubleEncoded)
            }
            _ => {}
        }
    }
    if value.starts_with("//") {
        return Err(AssetPathError::Authority);
    }
    let absolute = value.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in value.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(AssetPathError::AboveRoot)?;
            }
            _ => segments.push(segment),
        }
    }
    let joined = segments.join("/");
    Ok(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

/// Whether `path` is `prefix` or lies below it, compared segment by segment: the prefix
/// `dbfs:/FileStore/approved` covers `dbfs:/FileStore/approved/x`, never
/// `dbfs:/FileStore/approved-pii/x`. Both are expected normalised; a `.` or `..` segment on
/// either side (a prefix stored before prefixes were normalised, an id no normaliser
/// touched) matches nothing.
pub fn is_within(prefix: &str, path: &str) -> bool {
    let dotted = |text: &str| text.split('/').any(|s| s == "." || s == "..");
    if prefix.starts_with('/') != path.starts_with('/') || dotted(prefix) || dotted(path) {
        return false;
    }
    let mut have = path.split('/').filter(|s| !s.is_empty());
    let mut wanted = 0;
    for want in prefix.split('/').filter(|s| !s.is_empty()) {
        if have.next() != Some(want) {
            return false;
        }
        wanted += 1;
    }
    wanted > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use AssetPathError::*;

    #[test]
    fn dot_segments_and_doubled_slashes_resolve() {
        let n = |v: &str| normalize_asset_path(v);
        assert_eq!(
            n("/FileStore/approved/../../mnt/pii/x").as_deref(),
            Ok("/mnt/pii/x")
        );
        assert_eq!(
            n("/FileStore//approved/./x.csv").as_deref(),
            Ok("/FileStore/approved/x.csv")
        );
        assert_eq!(n("/a/b/").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a/..").as_deref(), Ok("/"));
        assert_eq!(n("/").as_deref(), Ok("/"));
        assert_eq!(n("model/./MLmodel").as_deref(), Ok("model/MLmodel"));
        assert_eq!(n("a/../b").as_deref(), Ok("b"));
        assert_eq!(
            n("50%off/x%zz").as_deref(),
            Ok("50%off/x%zz"),
            "not escapes"
        );
        assert_eq!(n("/é/ü").as_deref(), Ok("/é/ü"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let n = |v: &str| normalize_asset_path(v).unwrap_err();
        assert_eq!(n("/a/../../b"), AboveRoot);
        assert_eq!(n("/.."), AboveRoot);
        assert_eq!(n("a/../../b"), AboveRoot, "relative paths have a root too");
        assert_eq!(n("../x"), AboveRoot);
        assert_eq!(n("/a%2F..%2F..%2Fmnt"), DoubleEncoded);
        assert_eq!(n("/a/%2e%2e/x"), DoubleEncoded);
        assert_eq!(n("/a/%00"), DoubleEncoded);
        assert_eq!(n("/a\\..\\b"), Backslash);
        assert_eq!(n("/a\0b"), ControlByte);
        assert_eq!(n("/a\nb"), ControlByte);
        assert_eq!(n("/a\u{7f}"), ControlByte);
        assert_eq!(n("//host/x"), Authority);
    }

    #[test]
    fn parameters_are_decoded_once_strictly_and_must_agree() {
        let p = |q: &str| param(Some(q), "path");
        assert_eq!(p("path=%2Fa%2Fb+c").unwrap().as_deref(), Some("/a/b c"));
        assert_eq!(p("offset=1").unwrap(), None);
        assert_eq!(param(None, "path").unwrap(), None);
        assert_eq!(p("PATH=/x").unwrap().as_deref(), Some("/x"), "any case");
        assert_eq!(p("pa%74h=/x").unwrap().as_deref(), Some("/x"));
        assert_eq!(
            param(Some("clusterid=1&clusterId=2"), "clusterId"),
            Err(Repeated)
        );
        assert_eq!(p("path=/x&path=/x").unwrap().as_deref(), Some("/x"));
        assert_eq!(p("path=/ok&path=/mnt/pii"), Err(Repeated));
        assert_eq!(p("path=/ok&Path=/mnt/pii"), Err(Repeated));
        assert_eq!(
            p("path=/ok&path"),
            Err(Repeated),
            "a bare name is an empty value"
        );
        assert_eq!(p("path=%C0%AF"), Err(InvalidUtf8), "overlong '/'");
        assert_eq!(p("path=%FF"), Err(InvalidUtf8));
        assert_eq!(p("path=%2"), Err(BadPercentEncoding));
        assert_eq!(p("path=%zz"), Err(BadPercentEncoding));
    }

    #[test]
    fn a_prefix_covers_whole_segments_only() {
        let prefix = "dbfs:/FileStore/approved";
        assert!(is_within(prefix, "dbfs:/FileStore/approved/x.csv"));
        assert!(is_within(
            "dbfs:/FileStore/approved/",
            "dbfs:/FileStore/approved/a/b"
        ));
        assert!(is_within(prefix, "dbfs:/FileStore/approved"));
        assert!(!is_within(prefix, "dbfs:/FileStore/approved-pii/x"));
        assert!(!is_within(prefix, "dbfs:/FileStore/approvedx"));
        assert!(!is_within(prefix, "dbfs:/FileStore"));
        assert!(!is_within(
            prefix,
            "dbfs:/FileStore/approved/../../mnt/pii/x"
        ));
        assert!(!is_within("dbfs:/FileStore/approved/../..", "dbfs:/mnt/x"));
        assert!(!is_within("/Volumes/c/s/v", "Volumes/c/s/v/x"));
        assert!(!is_within("Volumes/c/s/v", "/Volumes/c/s/v/x"));
        assert!(is_within("/Volumes/c/s/v/", "/Volumes/c/s/v/x"));
        assert!(!is_within("", "/x"), "an empty prefix covers nothing");
        assert!(!is_within("/", "/x"));
        assert!(is_within("123", "123"), "ids: whole values");
        assert!(!is_within("123", "1234"));
    }
}
