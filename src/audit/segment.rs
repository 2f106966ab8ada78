//! Where the trail lives on disk: segment files `<gateway>.<first seq, 20 digits>.jsonl` and
//! one digest log `<gateway>.digests` per gateway, all in the trail directory. Zero-padded
//! sequence numbers make name order the chain's order, for people and tools alike.

use std::path::{Path, PathBuf};

/// One segment file found in a trail directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub gateway: String,
    pub first_seq: u64,
    pub name: String,
    pub path: PathBuf,
}

pub fn segment_name(gateway: &str, first_seq: u64) -> String {
    format!("{gateway}.{first_seq:020}.jsonl")
}

pub fn digest_name(gateway: &str) -> String {
    format!("{gateway}.digests")
}

/// `(gateway, first_seq)` of a segment file name; `None` for anything else.
pub fn parse_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (gateway, seq) = stem.rsplit_once('.')?;
    if gateway.is_empty() || seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((gateway, seq.parse().ok()?))
}

/// Every segment file of `dir`, ordered by gateway then first seq.
pub fn list(dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((gateway, first_seq)) = parse_name(name) {
            out.push(SegmentFile {
                gateway: gateway.to_owned(),
                first_seq,
                name: name.to_owned(),
                path: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| (&a.gateway, a.first_seq).cmp(&(&b.gateway, b.first_seq)));
    Ok(out)
}

/// The gateways that have a digest log in `dir`.
pub fn digest_logs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(gateway) = name.to_str().and_then(|n| n.strip_suffix(".digests")) {
            out.push((gateway.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_seq_order() {
        let a = segment_name("gw-1", 9);
        let b = segment_name("gw-1", 10);
        assert_eq!(a, "gw-1.00000000000000000009.jsonl");
        assert!(a < b);
        assert_eq!(parse_name(&b), Some(("gw-1", 10)));
        assert_eq!(
            parse_name("gw.1.00000000000000000001.jsonl"),
            Some(("gw.1", 1))
        );
        assert_eq!(parse_name("gw-1.jsonl"), None);
        assert_eq!(parse_name("gw-1.digests"), None);
        assert_eq!(parse_name(".00000000000000000001.jsonl"), None);
    }

    #[test]
    fn listing_groups_by_gateway_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            segment_name("b", 5),
            segment_name("a", 12),
            segment_name("a", 3),
            "notes.txt".into(),
            digest_name("a"),
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found: Vec<(String, u64)> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| (s.gateway, s.first_seq))
            .collect();
        assert_eq!(
            found,
            vec![("a".into(), 3), ("a".into(), 12), ("b".into(), 5)]
        );
        let logs = digest_logs(dir.path()).unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, "a");
    }
}
