//! `gatehouse audit verify`: checks every trail file of a directory — each record's hash,
//! the links between records and seq continuity — and names the first broken record.
//! A torn last line (a crash mid-write) is reported and tolerated as the tail only.

use std::path::{Path, PathBuf};

use super::chain::{ChainError, Verifier};

/// What verification found in one trail file.
#[derive(Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// A final line without its newline that does not verify: what a crash leaves.
    pub torn_tail: bool,
}

/// The first place the trail does not hold.
#[derive(Debug)]
pub struct Broken {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub seq: Option<u64>,
    pub error: ChainError,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.path.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Verifies every `*.jsonl` trail file in `dir`.
pub fn verify_dir(dir: &Path) -> Result<Vec<FileReport>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no trail files (*.jsonl)", dir.display()));
    }
    let mut reports = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        reports.push(verify_file(&path, &bytes).map_err(|b| b.to_string())?);
    }
    Ok(reports)
}

/// Verifies one trail file's bytes.
pub fn verify_file(path: &Path, bytes: &[u8]) -> Result<FileReport, Broken> {
    let mut v = Verifier::default();
    let mut first_seq = None;
    let mut torn_tail = false;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        match v.next(line) {
            Ok(link) => {
                first_seq.get_or_insert(link.seq);
            }
            Err(error) => {
                let is_tail = i + 1 == lines.len() && !line.ends_with(b"\n");
                if is_tail && error == ChainError::NotSealed {
                    torn_tail = true;
                    break;
                }
                let seq = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|r| r.get("seq").and_then(|s| s.as_u64()));
                return Err(Broken {
                    path: path.to_path_buf(),
                    line: i + 1,
                    seq,
                    error,
                });
            }
        }
    }
    Ok(FileReport {
        path: path.to_path_buf(),
        records: v.records,
        first_seq,
        last_seq: v.last().map(|l| l.seq),
        torn_tail,
    })
}
