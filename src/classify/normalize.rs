//! Raw request path → one canonical, decoded path that matching and forwarding both use.
//!
//! The gateway forwards `NormalizedPath::encoded()`, never the bytes it received, so the path
//! the classifier judged is the path the upstream serves. Anything with two plausible readings
//! (an encoded `/`, a backslash, `..` above the root, bytes that are not UTF-8) is refused here
//! rather than guessed at: this module must never clamp, repair or pass through an ambiguity.

use std::borrow::Cow;
use std::fmt;

use super::text::hex_value;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Bytes left literal in a forwarded segment: RFC 3986 unreserved plus the sub-delims and `:@`
/// that every server reads the same way. `;` stays encoded because some servers cut path
/// parameters at it, and `%` because a literal one would be decoded a second time.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// A request path reduced to its decoded segments, with dot segments resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedPath {
    /// The decoded segments back to back: one allocation, not one per segment, because this
    /// runs for every request.
    buf: String,
    /// Where each segment ends in `buf`.
    ends: Vec<usize>,
    trailing_slash: bool,
}

/// Why a path was refused. Messages reach clients in a 400, so they never echo the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%2F` inside a segment: one server splits on it, another does not.
    EncodedSlash,
    /// A `\`, literal or encoded: some servers treat it as a separator.
    Backslash,
    /// A `..` that would climb above `/`.
    AboveRoot,
    /// NUL, another C0 control byte, or DEL, after decoding.
    ControlByte,
    /// The decoded bytes are not UTF-8 (including overlong forms such as `%C0%AF`).
    InvalidUtf8,
}

/// Normalises `raw`, the request target's path exactly as received (no query).
///
/// `;params` are cut before decoding (an encoded `%3B` is data), each segment is
/// percent-decoded once, empty and `.` segments drop, `..` pops; trailing `/` is remembered
/// for forwarding but plays no part in matching.
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut buf = String::with_capacity(rest.len());
    let mut ends: Vec<usize> = Vec::with_capacity(rest.matches('/').count() + 1);
    let mut trailing_slash = false;
    for raw_segment in rest.split('/') {
        // Tomcat-style path parameters: servers disagree on whether `..;x` is `..`, so the
        // parameter is cut before the dot-segment test and never forwarded.
        let without_params = match raw_segment.find(';') {
            Some(at) => &raw_segment[..at],
            None => raw_segment,
        };
        let segment = decode_segment(without_params)?;
        match &*segment {
            "" | "." => trailing_slash = true,
            ".." => {
                if ends.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                buf.truncate(ends.last().copied().unwrap_or(0));
                trailing_slash = true;
            }
            _ => {
                buf.push_str(&segment);
                ends.push(buf.len());
                trailing_slash = false;
            }
        }
    }
    let trailing_slash = trailing_slash && !ends.is_empty();
    Ok(NormalizedPath {
        buf,
        ends,
        trailing_slash,
    })
}

impl NormalizedPath {
    /// The decoded segments, none empty, none `.` or `..`, none containing `/`.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.buf[start..self.ends[i]]
        })
    }

    /// How many segments there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether this is the root path `/`.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The decoded path, `/a/b`, without a trailing slash (`/` for the root), built on demand
    /// because the hot path never needs it. For audit and display; what goes upstream is
    /// [`NormalizedPath::encoded`].
    pub fn decoded(&self) -> String {
        self.to_string()
    }

    /// Whether the request ended in `/` (or a final dot segment, as RFC 3986 resolves it).
    pub fn has_trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// The canonical percent-encoded form forwarded upstream; normalising it again yields
    /// this same path.
    pub fn encoded(&self) -> String {
        if self.ends.is_empty() {
            return String::from("/");
        }
        let mut out = String::with_capacity(self.buf.len() + 4 * self.ends.len());
        for segment in self.segments() {
            out.push('/');
            out.extend(utf8_percent_encode(segment, SEGMENT));
        }
        if self.trailing_slash {
            out.push('/');
        }
        out
    }
}

/// Writes the decoded form, as [`NormalizedPath::decoded`] returns it.
impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ends.is_empty() {
            return f.write_str("/");
        }
        for segment in self.segments() {
            f.write_str("/")?;
            f.write_str(segment)?;
        }
        Ok(())
    }
}

impl PathError {
    fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "request path must start with '/'",
            PathError::BadPercentEncoding => "request path has a malformed percent-encoding",
            PathError::EncodedSlash => "request path contains an encoded '/'",
            PathError::Backslash => "request path contains a backslash",
            PathError::AboveRoot => "request path climbs above the root",
            PathError::ControlByte => "request path contains a control character",
            PathError::InvalidUtf8 => "request path is not valid UTF-8 once decoded",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PathError {}

/// Checks a byte that will be part of a decoded segment. `encoded` says whether it came from a
/// `%XX` escape, because only an encoded `/` can reach this point.
fn check_byte(byte: u8, encoded: bool) -> Result<(), PathError> {
    match byte {
        b'/' if encoded => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::Backslash),
        0x00..=0x1F | 0x7F => Err(PathError::ControlByte),
        _ => Ok(()),
    }
}

fn decode_segment(segment: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = segment.as_bytes();
    if !bytes.contains(&b'%') {
        for &byte in bytes {
            check_byte(byte, false)?;
        }
        return Ok(Cow::Borrowed(segment));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'%' {
            let high = bytes.get(at + 1).copied().and_then(hex_value);
            let low = bytes.get(at + 2).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(PathError::BadPercentEncoding);
            };
            let decoded = (high << 4) | low;
            check_byte(decoded, true)?;
            out.push(decoded);
            at += 3;
        } else {
            check_byte(byte, false)?;
            out.push(byte);
            at += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::InvalidUtf8)
}

#[cfg(test)]
mod tests;
