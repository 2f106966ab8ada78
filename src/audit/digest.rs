//! Signed digests over closed segments, modelled on CloudTrail's log-file validation.
//!
//! Each line of `<gateway>.digests` attests one closed segment (its name, seq and time range,
//! record count, SHA-256 of the file and the hash of its last record) or an interval with no
//! records, and links to the previous digest by hash. The line is signed with Ed25519. A
//! rewritten segment whose record chain was recomputed end to end still fails here, because
//! nobody without the private key can produce a digest for the new bytes.
//!
//! Line format: `{<entry fields>,"key_id":"…","signature":"<base64 or empty>"}`. The signed
//! bytes (and the bytes the next digest's `prev_digest` hashes) are the line without the
//! `,"signature":"…"` member: everything up to it, then `}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why the digest was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The segment reached its size or age limit.
    Rotate,
    /// A whole interval passed with no records: proof the gateway was running and quiet.
    Interval,
    /// The gateway stopped.
    Stop,
    /// Found at start-up: the segment a crash left open, attested as found on disk.
    Recovered,
}

/// What a digest attests. Field order is the line's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub digest_seq: u64,
    pub gateway: String,
    pub ts: String,
    pub reason: Reason,
    /// File name of the segment, relative to the trail directory; `None` for an interval
    /// with no records.
    pub segment: Option<String>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    pub records: u64,
    pub bytes: u64,
    /// SHA-256 of the segment file, hex.
    pub segment_sha256: Option<String>,
    /// `hash` of the segment's last record: ties the digest to the record chain.
    pub last_record_hash: Option<String>,
    /// Hash of the previous digest's signed bytes; zeros for the first digest.
    pub prev_digest: String,
    /// First 16 hex digits of SHA-256 of the public key, or empty when unsigned.
    pub key_id: String,
}

/// The signing half, loaded from `[audit] signing_key`.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        write!(f, "Signer({})", self.key_id)
    }
}

/// The checking half, from `PATH.pub`.
#[derive(Debug, Clone)]
pub struct PublicKey {
    raw: Vec<u8>,
    pub key_id: String,
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The first `T` in a PEM text, by the PEM reader the TLS setup uses too.
fn pem_section<T: PemObject>(text: &str, label: &str) -> Result<T, String> {
    T::from_pem_slice(text.as_bytes()).map_err(|e| match e {
        pem::Error::Base64Decode(_) => format!("the PEM {label} is not valid base64"),
        _ => format!("not a PEM {label}"),
    })
}

impl Signer {
    /// Reads a PKCS#8 PEM Ed25519 private key (what `gatehouse audit keygen` writes).
    pub fn from_pem(text: &str) -> Result<Signer, String> {
        let der: PrivatePkcs8KeyDer<'_> = pem_section(text, "PRIVATE KEY")?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|_| "not an Ed25519 PKCS#8 private key".to_owned())?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    pub fn load(path: &std::path::Path) -> Result<Signer, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Signer::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The checking half of this key.
    pub fn public_key(&self) -> PublicKey {
        let raw = self.pair.public_key().as_ref().to_vec();
        PublicKey {
            key_id: key_id(&raw),
            raw,
        }
    }
}

impl PublicKey {
    /// Reads a SubjectPublicKeyInfo PEM Ed25519 public key (`PATH.pub`).
    pub fn from_pem(text: &str) -> Result<PublicKey, String> {
        let der: SubjectPublicKeyInfoDer<'_> = pem_section(text, "PUBLIC KEY")?;
        let raw = der
            .as_ref()
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or_else(|| "not an Ed25519 public key".to_owned())?
            .to_vec();
        Ok(PublicKey {
            key_id: key_id(&raw),
            raw,
        })
    }

    pub fn load(path: &std::path::Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PublicKey::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Hash of "no previous digest".
pub const NO_PREVIOUS: [u8; 32] = [0; 32];

/// Formats, signs and terminates one digest line; returns it and its hash (the next
/// digest's `prev_digest`). `entry.key_id` is set from the signer.
pub fn seal(mut entry: Entry, signer: Option<&Signer>) -> (Vec<u8>, [u8; 32]) {
    entry.key_id = signer.map(|s| s.key_id.clone()).unwrap_or_default();
    let mut signed = serde_json::to_vec(&entry).expect("a digest entry always serialises");
    let hash: [u8; 32] = Sha256::digest(&signed).into();
    let signature = signer
        .map(|s| B64.encode(s.pair.sign(&signed).as_ref()))
        .unwrap_or_default();
    signed.pop(); // the closing brace, reopened for the signature member
    signed.extend_from_slice(b",\"signature\":\"");
    signed.extend_from_slice(signature.as_bytes());
    signed.extend_from_slice(b"\"}\n");
    (signed, hash)
}

/// Why a digest line does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    Unreadable,
    Unsigned,
    WrongKey { key_id: String },
    BadSignature,
}

impl std::fmt::Display for DigestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DigestError::Unreadable => f.write_str("not a digest line"),
            DigestError::Unsigned => f.write_str("the digest is not signed"),
            DigestError::WrongKey { key_id } => {
                write!(f, "signed with key {key_id}, not the key given")
            }
            DigestError::BadSignature => {
                f.write_str("the signature does not match the digest (altered or forged)")
            }
        }
    }
}

/// A digest line read back.
#[derive(Debug, Clone)]
pub struct Opened {
    pub entry: Entry,
    pub hash: [u8; 32],
    pub signed: bool,
}

/// Parses one line and, when `key` is given, checks its signature.
pub fn open(line: &[u8], key: Option<&PublicKey>) -> Result<Opened, DigestError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let marker = b",\"signature\":\"";
    let at = line
        .windows(marker.len())
        .rposition(|w| w == marker)
        .ok_or(DigestError::Unreadable)?;
    let signature_b64 = line[at + marker.len()..]
        .strip_suffix(b"\"}")
        .ok_or(DigestError::Unreadable)?;
    let mut signed = line[..at].to_vec();
    signed.push(b'}');
    let entry: Entry = serde_json::from_slice(&signed).map_err(|_| DigestError::Unreadable)?;
    let hash: [u8; 32] = Sha256::digest(&signed).into();
    let is_signed = !signature_b64.is_empty();
    if let Some(key) = key {
        if !is_signed {
            return Err(DigestError::Unsigned);
        }
        if entry.key_id != key.key_id {
            return Err(DigestError::WrongKey {
                key_id: entry.key_id,
            });
        }
        let signature = B64
            .decode(signature_b64)
            .map_err(|_| DigestError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, &key.raw)
            .verify(&signed, &signature)
            .map_err(|_| DigestError::BadSignature)?;
    }
    Ok(Opened {
        entry,
        hash,
        signed: is_signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Signer, PublicKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let public = crate::dev::write_ed25519_keypair(&key).unwrap();
        (
            Signer::load(&key).unwrap(),
            PublicKey::load(&public).unwrap(),
        )
    }

    fn entry(n: u64) -> Entry {
        Entry {
            digest_seq: n,
            gateway: "gw".into(),
            ts: "2026-11-27T10:00:00.000000Z".into(),
            reason: Reason::Rotate,
            segment: Some("gw.00000000000000000001.jsonl".into()),
            first_seq: Some(1),
            last_seq: Some(10),
            first_ts: Some("2026-11-27T09:00:00.000000Z".into()),
            last_ts: Some("2026-11-27T09:59:00.000000Z".into()),
            records: 10,
            bytes: 4096,
            segment_sha256: Some("ab".repeat(32)),
            last_record_hash: Some("cd".repeat(32)),
            prev_digest: hex::encode(NO_PREVIOUS),
            key_id: String::new(),
        }
    }

    #[test]
    fn a_signed_digest_opens_with_its_key_and_its_hash_is_stable() {
        let (signer, public) = keys();
        let (line, hash) = seal(entry(1), Some(&signer));
        assert!(line.ends_with(b"\"}\n"));
        let opened = open(&line, Some(&public)).unwrap();
        assert_eq!(opened.hash, hash);
        assert!(opened.signed);
        assert_eq!(opened.entry.records, 10);
        assert_eq!(opened.entry.key_id, public.key_id);
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["reason"], "rotate");
    }

    #[test]
    fn an_edited_digest_fails_its_signature_and_another_key_is_named() {
        let (signer, public) = keys();
        let (line, _) = seal(entry(1), Some(&signer));
        let edited = String::from_utf8(line.clone())
            .unwrap()
            .replace("\"records\":10", "\"records\":11");
        assert_eq!(
            open(edited.as_bytes(), Some(&public)).unwrap_err(),
            DigestError::BadSignature
        );
        let (_, other) = keys();
        assert!(matches!(
            open(&line, Some(&other)).unwrap_err(),
            DigestError::WrongKey { .. }
        ));
    }

    #[test]
    fn an_unsigned_digest_is_refused_when_a_key_is_required() {
        let (_, public) = keys();
        let (line, hash) = seal(entry(1), None);
        let opened = open(&line, None).unwrap();
        assert!(!opened.signed);
        assert_eq!(opened.hash, hash);
        assert_eq!(
            open(&line, Some(&public)).unwrap_err(),
            DigestError::Unsigned
        );
    }

    #[test]
    fn keys_that_are_not_ed25519_pem_are_refused_with_a_reason() {
        assert!(Signer::from_pem("hello").unwrap_err().contains("PEM"));
        let not_ed = "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        assert!(PublicKey::from_pem(not_ed).unwrap_err().contains("Ed25519"));
    }
}
