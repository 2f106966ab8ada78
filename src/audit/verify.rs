//! `gatehouse audit verify`: checks a trail directory end to end, per gateway —
//! the digest log (signatures, digest chain, numbering), that every attested segment is
//! present and byte-for-byte what was attested, and every record's hash, link and seq across
//! all segments in order. The first thing that does not hold is named; nothing after it is
//! trusted. A torn last line (a crash mid-write) is tolerated as the very tail only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::chain::{ChainError, Verifier};
use super::digest::{self, PublicKey};
use super::segment::{self, SegmentFile};

/// What verification found for one gateway's trail.
#[derive(Debug, Default)]
pub struct GatewayReport {
    pub gateway: String,
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub digests: u64,
    /// Digests whose signature was checked against the key given.
    pub signatures_checked: u64,
    /// Digests for intervals with no records.
    pub quiet_intervals: u64,
    /// The last segment when no digest covers it yet: still being written, or left by a
    /// crash and not yet recovered by a restart.
    pub open_segment: Option<String>,
    /// A final line without its newline that does not verify: what a crash leaves.
    pub torn_tail: bool,
}

/// The first place the trail does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub path: PathBuf,
    /// 1-based line number, when the problem is one line.
    pub line: Option<usize>,
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.what)
    }
}

fn broken(path: &Path, line: Option<usize>, seq: Option<u64>, what: impl Into<String>) -> Broken {
    Broken {
        path: path.to_path_buf(),
        line,
        seq,
        what: what.into(),
    }
}

/// Verifies every gateway's trail in `dir`. With `key`, every gateway must have a digest
/// log, every digest must be signed by that key and every closed segment attested.
pub fn verify_dir(dir: &Path, key: Option<&PublicKey>) -> Result<Vec<GatewayReport>, Broken> {
    let io = |e: std::io::Error| broken(dir, None, None, e.to_string());
    let segments = segment::list(dir).map_err(io)?;
    let logs: HashMap<String, PathBuf> =
        segment::digest_logs(dir).map_err(io)?.into_iter().collect();
    let mut gateways: Vec<&str> = segments
        .iter()
        .map(|s| s.gateway.as_str())
        .chain(logs.keys().map(String::as_str))
        .collect();
    gateways.sort();
    gateways.dedup();
    if gateways.is_empty() {
        return Err(broken(
            dir,
            None,
            None,
            "no trail here: no segment files (<gateway>.<seq>.jsonl) and no digest log",
        ));
    }
    gateways
        .into_iter()
        .map(|gateway| {
            let own: Vec<&SegmentFile> = segments.iter().filter(|s| s.gateway == gateway).collect();
            let log = logs.get(gateway);
            if log.is_none() && key.is_some() {
                let path = dir.join(segment::digest_name(gateway));
                return Err(broken(
                    &path,
                    None,
                    None,
                    "missing: a key was given but this gateway's trail has no digest log",
                ));
            }
            verify_gateway(gateway, &own, log.map(PathBuf::as_path), key)
        })
        .collect()
}

/// The digest log read and checked: each segment's attesting entry by name.
struct Attested {
    by_segment: HashMap<String, (u64, digest::Entry)>,
    /// In digest order, for finding segments that are gone.
    order: Vec<String>,
}

fn read_digests(
    path: &Path,
    key: Option<&PublicKey>,
    report: &mut GatewayReport,
) -> Result<Attested, Broken> {
    let bytes = std::fs::read(path).map_err(|e| broken(path, None, None, e.to_string()))?;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let mut attested = Attested {
        by_segment: HashMap::new(),
        order: Vec::new(),
    };
    let mut prev = digest::NO_PREVIOUS;
    for (i, line) in lines.iter().enumerate() {
        let at = Some(i + 1);
        let opened = match digest::open(line, key) {
            Ok(o) => o,
            // A crash while appending a digest leaves a torn last line, like a segment.
            Err(digest::DigestError::Unreadable)
                if i + 1 == lines.len() && !line.ends_with(b"\n") =>
            {
                break
            }
            Err(e) => return Err(broken(path, at, None, format!("digest: {e}"))),
        };
        let entry = opened.entry;
        let expected = report.digests + 1;
        if entry.digest_seq != expected {
            return Err(broken(path, at, None, format!(
                "digest_seq {} where {expected} was expected (a digest was removed, inserted or moved)",
                entry.digest_seq
            )));
        }
        if entry.prev_digest != hex::encode(prev) {
            return Err(broken(
                path,
                at,
                None,
                "prev_digest does not match the previous digest (the digest log was altered)",
            ));
        }
        prev = opened.hash;
        report.digests += 1;
        if key.is_some() {
            report.signatures_checked += 1;
        }
        match &entry.segment {
            Some(name) => {
                attested.order.push(name.clone());
                attested
                    .by_segment
                    .insert(name.clone(), (entry.digest_seq, entry));
            }
            None => report.quiet_intervals += u64::from(entry.records == 0),
        }
    }
    Ok(attested)
}

fn verify_gateway(
    gateway: &str,
    segments: &[&SegmentFile],
    log: Option<&Path>,
    key: Option<&PublicKey>,
) -> Result<GatewayReport, Broken> {
    let mut report = GatewayReport {
        gateway: gateway.to_owned(),
        segments: segments.len(),
        ..Default::default()
    };
    let attested = match log {
        Some(path) => Some(read_digests(path, key, &mut report)?),
        None => None,
    };
    // A segment a digest names must be here; report it by name before the chain trips over
    // the hole it leaves.
    if let Some(attested) = &attested {
        for name in &attested.order {
            if !segments.iter().any(|s| &s.name == name) {
                let (n, entry) = &attested.by_segment[name];
                let dir = segments
                    .first()
                    .and_then(|s| s.path.parent())
                    .or(log.and_then(Path::parent))
                    .unwrap_or(Path::new("."));
                return Err(broken(
                    &dir.join(name),
                    None,
                    entry.first_seq,
                    format!(
                        "missing segment: digest {n} attests it (seq {}..{}, {} records)",
                        entry.first_seq.unwrap_or_default(),
                        entry.last_seq.unwrap_or_default(),
                        entry.records
                    ),
                ));
            }
        }
    }
    let mut chain = Verifier::default();
    for (index, seg) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let bytes = read_regular(&seg.path)?;
        let records_before = chain.records;
        let torn = verify_records(&seg.path, &bytes, is_last, &mut chain)?;
        report.torn_tail |= torn;
        let records = chain.records - records_before;
        let first_seq = chain.last().map(|l| l.seq + 1 - records);
        if records > 0 && first_seq != Some(seg.first_seq) {
            return Err(broken(
                &seg.path,
                Some(1),
                first_seq,
                format!(
                    "the file name says the segment starts at seq {}",
                    seg.first_seq
                ),
            ));
        }
        report.first_seq = report.first_seq.or(first_seq);
        match attested.as_ref().and_then(|a| a.by_segment.get(&seg.name)) {
            Some((n, entry)) => check_against_digest(
                &seg.path,
                &bytes,
                records,
                chain.last().map(|l| (l.seq, l.hash)),
                *n,
                entry,
            )?,
            None if is_last => report.open_segment = Some(seg.name.clone()),
            None if attested.is_some() || key.is_some() => {
                return Err(broken(
                    &seg.path,
                    None,
                    Some(seg.first_seq),
                    "no digest attests this closed segment (it was added, or its digest removed)",
                ));
            }
            None => {}
        }
    }
    report.records = chain.records;
    report.last_seq = chain.last().map(|l| l.seq);
    Ok(report)
}

/// A segment's bytes. Only a regular file is read: a device or pipe in a segment's place
/// (`/dev/zero` never ends) is named, not read.
fn read_regular(path: &Path) -> Result<Vec<u8>, Broken> {
    let fail = |e: std::io::Error| broken(path, None, None, e.to_string());
    if !std::fs::metadata(path).map_err(fail)?.is_file() {
        return Err(broken(
            path,
            None,
            None,
            "not a regular file (a device, pipe or directory in a segment's place)",
        ));
    }
    std::fs::read(path).map_err(fail)
}

/// Checks each line against the one before; returns whether a torn tail was tolerated.
fn verify_records(
    path: &Path,
    bytes: &[u8],
    may_be_torn: bool,
    chain: &mut Verifier,
) -> Result<bool, Broken> {
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if let Err(error) = chain.next(line) {
            let is_tail = may_be_torn && i + 1 == lines.len() && !line.ends_with(b"\n");
            if is_tail && error == ChainError::NotSealed {
                return Ok(true);
            }
            let seq = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|r| r.get("seq").and_then(|s| s.as_u64()));
            return Err(broken(path, Some(i + 1), seq, error.to_string()));
        }
    }
    Ok(false)
}

fn check_against_digest(
    path: &Path,
    bytes: &[u8],
    records: u64,
    last: Option<(u64, [u8; 32])>,
    digest_seq: u64,
    entry: &digest::Entry,
) -> Result<(), Broken> {
    let mut differs = Vec::new();
    if entry.segment_sha256.as_deref() != Some(hex::encode(Sha256::digest(bytes)).as_str()) {
        differs.push("SHA-256");
    }
    if entry.bytes != bytes.len() as u64 {
        differs.push("size");
    }
    if entry.records != records {
        differs.push("record count");
    }
    if entry.last_seq != last.map(|l| l.0) {
        differs.push("last seq");
    }
    if entry.last_record_hash != last.map(|l| hex::encode(l.1)) {
        differs.push("last record hash");
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(broken(path, None, entry.first_seq, format!(
        "does not match digest {digest_seq} ({} differ): the segment was altered, truncated or replaced after it was closed",
        differs.join(", ")
    )))
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
