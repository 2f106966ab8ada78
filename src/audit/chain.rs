//! The per-record hash chain: pure functions over bytes, shared by the writer (which seals)
//! and `gatehouse audit verify` (which checks).
//!
//! A sealed line is `{"seq":N,<record fields>,"prev":"<hex>","hash":"<hex>"}`. `hash` is the
//! SHA-256 of the line's canonical form: the exact bytes without the `,"hash":"…"` member,
//! i.e. ending in `"prev":"<hex>"}`. `prev` is the previous record's hash; the first record of
//! a trail links to `GENESIS`. Editing, deleting, inserting or reordering any record breaks
//! the hash of that record or the link of the next one.

use std::fmt;

use sha2::{Digest, Sha256};

/// What the first record of a trail links to.
pub const GENESIS: [u8; 32] = [0; 32];

const HASH_SUFFIX_LEN: usize = r#","hash":""#.len() + 64 + r#""}"#.len();
const PREV_SUFFIX_LEN: usize = r#","prev":""#.len() + 64 + 1;

/// Appends the sealed line for `body` (a JSON object with the record's own fields) and a
/// newline to `out`; returns the new record's hash.
pub fn seal(out: &mut Vec<u8>, seq: u64, body: &[u8], prev: &[u8; 32]) -> [u8; 32] {
    let start = out.len();
    out.extend_from_slice(b"{\"seq\":");
    push_decimal(out, seq);
    let inner = body
        .strip_prefix(b"{")
        .and_then(|b| b.strip_suffix(b"}"))
        .unwrap_or_default();
    if !inner.is_empty() {
        out.push(b',');
        out.extend_from_slice(inner);
    }
    out.extend_from_slice(b",\"prev\":\"");
    push_hex(out, prev);
    out.extend_from_slice(b"\"}");
    let hash: [u8; 32] = Sha256::digest(&out[start..]).into();
    out.pop(); // the closing brace, reopened for the hash member
    out.extend_from_slice(b",\"hash\":\"");
    push_hex(out, &hash);
    out.extend_from_slice(b"\"}\n");
    hash
}

/// Lower-case hex of a hash, without an intermediate `String` (this runs twice per record).
fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    let mut buf = [0u8; 64];
    // The buffer is exactly twice the input: encoding cannot fail.
    if hex::encode_to_slice(bytes, &mut buf).is_ok() {
        out.extend_from_slice(&buf);
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The chain fields of one sealed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
}

/// Why a line does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// Not a sealed record (no hash member at the end, or not JSON).
    NotSealed,
    /// The stored hash is not the hash of the record: the record was altered.
    HashMismatch,
    /// `prev` is not the previous record's hash: a record before it was removed, inserted or
    /// moved.
    BrokenLink,
    /// `seq` does not follow the previous record's.
    SeqGap { expected: u64, found: u64 },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::NotSealed => f.write_str("not a sealed record (no hash, or not JSON)"),
            ChainError::HashMismatch => {
                f.write_str("the record's content does not match its hash (altered)")
            }
            ChainError::BrokenLink => f.write_str(
                "prev does not match the previous record's hash (a record was removed, inserted or moved)",
            ),
            ChainError::SeqGap { expected, found } => {
                write!(f, "seq {found} where {expected} was expected")
            }
        }
    }
}

/// Reads and checks one line on its own: its hash over its canonical bytes.
pub fn open(line: &[u8]) -> Result<Link, ChainError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return Err(ChainError::NotSealed);
    }
    let (canonical_head, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let hex_hash = suffix
        .strip_prefix(br#","hash":""#)
        .and_then(|s| s.strip_suffix(br#""}"#))
        .ok_or(ChainError::NotSealed)?;
    let stored = decode_hash(hex_hash).ok_or(ChainError::NotSealed)?;
    let mut hasher = Sha256::new();
    hasher.update(canonical_head);
    hasher.update(b"}");
    let computed: [u8; 32] = hasher.finalize().into();
    // The line is whole JSON (checked without building it) and the chain fields sit where
    // `seal` put them: seq first, prev last before the hash.
    serde_json::from_slice::<serde::de::IgnoredAny>(line).map_err(|_| ChainError::NotSealed)?;
    let seq = canonical_head
        .strip_prefix(b"{\"seq\":")
        .and_then(|rest| {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&rest[..digits])
                .ok()?
                .parse::<u64>()
                .ok()
        })
        .ok_or(ChainError::NotSealed)?;
    let prev = canonical_head
        .len()
        .checked_sub(PREV_SUFFIX_LEN)
        .map(|at| &canonical_head[at..])
        .and_then(|p| p.strip_prefix(br#","prev":""#))
        .and_then(|p| p.strip_suffix(b"\""))
        .and_then(decode_hash)
        .ok_or(ChainError::NotSealed)?;
    if computed != stored {
        return Err(ChainError::HashMismatch);
    }
    Ok(Link {
        seq,
        prev,
        hash: stored,
    })
}

fn decode_hash(hex_text: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// Checks lines in order, each against the one before.
#[derive(Debug, Default)]
pub struct Verifier {
    last: Option<Link>,
    pub records: u64,
}

impl Verifier {
    /// Checks the next line; the first line must link to `GENESIS`.
    pub fn next(&mut self, line: &[u8]) -> Result<&Link, ChainError> {
        let link = open(line)?;
        let (expected_prev, expected_seq) = match &self.last {
            Some(last) => (last.hash, Some(last.seq + 1)),
            None => (GENESIS, None),
        };
        if let Some(expected) = expected_seq {
            if link.seq != expected {
                return Err(ChainError::SeqGap {
                    expected,
                    found: link.seq,
                });
            }
        }
        if link.prev != expected_prev {
            return Err(ChainError::BrokenLink);
        }
        self.records += 1;
        self.last = Some(link);
        Ok(self.last.as_ref().expect("just set"))
    }

    pub fn last(&self) -> Option<&Link> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut out = Vec::new();
                prev = seal(
                    &mut out,
                    seq,
                    format!(r#"{{"phase":"decision","n":{seq}}}"#).as_bytes(),
                    &prev,
                );
                out
            })
            .collect()
    }

    fn verify(lines: &[Vec<u8>]) -> Result<u64, (usize, ChainError)> {
        let mut v = Verifier::default();
        for (i, l) in lines.iter().enumerate() {
            v.next(l).map_err(|e| (i, e))?;
        }
        Ok(v.records)
    }

    #[test]
    fn a_sealed_trail_verifies_and_lines_are_json() {
        let lines = trail(5);
        assert_eq!(verify(&lines), Ok(5));
        let v: serde_json::Value = serde_json::from_slice(&lines[2]).unwrap();
        assert_eq!(v["seq"], 3);
        assert_eq!(v["n"], 3);
        assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_broken_record() {
        let lines = trail(5);
        let mut edited = lines.clone();
        edited[2] = String::from_utf8(edited[2].clone())
            .unwrap()
            .replace("\"n\":3", "\"n\":4")
            .into_bytes();
        assert_eq!(verify(&edited), Err((2, ChainError::HashMismatch)));

        let mut deleted = lines.clone();
        deleted.remove(2);
        assert_eq!(
            verify(&deleted),
            Err((
                2,
                ChainError::SeqGap {
                    expected: 3,
                    found: 4
                }
            ))
        );

        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(
            verify(&swapped),
            Err((
                1,
                ChainError::SeqGap {
                    expected: 2,
                    found: 3
                }
            ))
        );

        // A record rewritten with a recomputed hash but the original seq: the link breaks.
        let mut forged = lines.clone();
        let mut out = Vec::new();
        seal(&mut out, 3, br#"{"phase":"decision","n":99}"#, &GENESIS);
        forged[2] = out;
        assert_eq!(verify(&forged), Err((2, ChainError::BrokenLink)));

        let mut torn = lines.clone();
        let half = torn[4].len() / 2;
        torn[4].truncate(half);
        assert_eq!(verify(&torn), Err((4, ChainError::NotSealed)));
    }
}
