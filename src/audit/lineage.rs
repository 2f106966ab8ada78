//! `gatehouse audit lineage`: which principals read or wrote which assets, how often, when
//! and how many bytes moved: the question a data-subject (GDPR access or erasure) request asks.
//!
//! Pure and streaming: the caller feeds every record in file order. Memory holds one entry per
//! output row plus the forwarded decisions still waiting for their completion record, so a
//! trail of millions of records costs no more than its distinct (principal, asset, direction)s.
//!
//! Direction comes from the action category, the one field both catalogs (Databricks and S3)
//! agree on: `download` and `credentials` are reads, `upload` is a write (the catalogs file
//! deletions such as `files.delete` and `DeleteObject` there, and erasure evidence belongs
//! with writes), everything else (`metadata`, `execute`, `config`, `auth`, `other`) is
//! `other`. An S3 copy (`copy_source` set) also reads its source, so it adds a `read` row for
//! the source object: copies are how data leaves a prefix without a download.

use std::collections::hash_map::{Entry, HashMap};

use serde_json::{json, Value};

use super::query::{asset_name, text};

/// Whose lineage to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Every asset whose name starts with this prefix (`s3://bucket/users/42/`, `dbfs:/pii/`).
    Asset(String),
    /// Everything this principal id touched.
    Principal(String),
}

/// One (principal, asset, direction) with its counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// `-` when the request carried no identity (refused before authentication).
    pub principal: String,
    pub asset: String,
    /// `read`, `write` or `other`.
    pub direction: &'static str,
    /// Requests that went upstream, report-only ones included.
    pub allowed: u64,
    pub denied: u64,
    /// The part of `allowed` that an enforcing policy would have refused.
    pub would_deny: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Only forwarded requests add bytes: a refusal's bytes are its error body, not data.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Distinct action names, sorted.
    pub actions: Vec<String>,
    /// Distinct workspaces the requests came through, sorted.
    pub workspaces: Vec<String>,
}

/// The accumulator. Rows come out of [`Lineage::finish`] sorted by asset, then principal,
/// then direction, whichever the subject: one order keeps the output diffable.
#[derive(Debug)]
pub struct Lineage {
    subject: Subject,
    rows: Vec<Row>,
    index: HashMap<(String, String, &'static str), usize>,
    /// exchange → row awaiting that exchange's completion; removed when it arrives.
    pending: HashMap<String, usize>,
}

/// The record writes `bucket/key?versionId=…`; versions are dropped so the source row lines up
/// with the object's other rows. The classifier rejects keys holding `?versionId=`.
fn copy_source(record: &Value) -> Option<String> {
    let source = text(record, &["asset", "copy_source"])?;
    let object = source.split_once("?versionId=").map_or(source, |(o, _)| o);
    Some(format!("s3://{object}"))
}

fn direction(category: Option<&str>) -> &'static str {
    match category {
        // `credentials` with an asset hands back the asset's value itself (`secrets.get`).
        Some("download" | "credentials") => "read",
        Some("upload") => "write",
        _ => "other",
    }
}

fn insert_sorted(list: &mut Vec<String>, item: Option<&str>) {
    if let Some(item) = item {
        if let Err(at) = list.binary_search_by(|x| x.as_str().cmp(item)) {
            list.insert(at, item.to_owned());
        }
    }
}

impl Lineage {
    pub fn new(subject: Subject) -> Self {
        Lineage {
            subject,
            rows: Vec::new(),
            index: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Feed every record of the trail in file order; records other than decisions and
    /// completions (`start`, `stop`, …) are ignored.
    pub fn add(&mut self, record: &Value) {
        match text(record, &["phase"]) {
            Some("decision") => self.decision(record),
            Some("completion") => self.completion(record),
            _ => {}
        }
    }

    fn decision(&mut self, r: &Value) {
        let Some(asset) = asset_name(r) else { return };
        let principal = text(r, &["principal", "id"]);
        if let Subject::Principal(id) = &self.subject {
            if principal != Some(id.as_str()) {
                return;
            }
        }
        let principal = principal.unwrap_or("-");
        let dir = direction(text(r, &["action", "category"]));
        let row = self.count(r, principal, asset, dir);
        if let Some(source) = copy_source(r) {
            // The copy's bytes stay inside S3; the response bytes belong to the destination.
            self.count(r, principal, source, "read");
        }
        // Mirrors `Effect::forwards`: only a deny stops the request, so only a deny has no
        // data bytes worth waiting for.
        if text(r, &["decision", "effect"]) == Some("deny") {
            return;
        }
        if let (Some(i), Some(exchange)) = (row, text(r, &["exchange"])) {
            self.pending.insert(exchange.to_owned(), i);
        }
    }

    fn count(&mut self, r: &Value, who: &str, asset: String, dir: &'static str) -> Option<usize> {
        if let Subject::Asset(prefix) = &self.subject {
            if !asset.starts_with(prefix.as_str()) {
                return None;
            }
        }
        let i = match self.index.entry((who.to_owned(), asset, dir)) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let (principal, asset, direction) = e.key().clone();
                self.rows.push(Row {
                    principal,
                    asset,
                    direction,
                    ..Row::default()
                });
                *e.insert(self.rows.len() - 1)
            }
        };
        let row = &mut self.rows[i];
        match text(r, &["decision", "effect"]) {
            Some("deny") => row.denied += 1,
            // An unknown or missing effect is counted as access: over-reporting to a data
            // subject is recoverable, under-reporting is not.
            _ => {
                row.allowed += 1;
                if text(r, &["decision", "would_deny"]).is_some() {
                    row.would_deny += 1;
                }
            }
        }
        // Min/max rather than first/last fed: several gateways' files interleave in time.
        let ts = text(r, &["ts"]).unwrap_or("");
        if !ts.is_empty() && (row.first_seen.is_empty() || ts < row.first_seen.as_str()) {
            row.first_seen = ts.to_owned();
        }
        if ts > row.last_seen.as_str() {
            row.last_seen = ts.to_owned();
        }
        insert_sorted(&mut row.actions, text(r, &["action", "name"]));
        insert_sorted(&mut row.workspaces, text(r, &["workspace"]));
        Some(i)
    }

    fn completion(&mut self, r: &Value) {
        let Some(i) = text(r, &["exchange"]).and_then(|x| self.pending.remove(x)) else {
            return;
        };
        let bytes = |field: &str| r.get(field).and_then(Value::as_u64).unwrap_or(0);
        let row = &mut self.rows[i];
        row.bytes_in = row.bytes_in.saturating_add(bytes("bytes_in"));
        row.bytes_out = row.bytes_out.saturating_add(bytes("bytes_out"));
    }

    /// The rows, sorted by asset, then principal, then direction. Decisions whose completion
    /// never came (a crash mid-request) stay counted, with no bytes.
    pub fn finish(self) -> Vec<Row> {
        let mut rows = self.rows;
        rows.sort_by(|a, b| {
            (&a.asset, &a.principal, a.direction).cmp(&(&b.asset, &b.principal, b.direction))
        });
        rows
    }
}

fn to_json(r: &Row) -> Value {
    json!({
        "principal": r.principal, "asset": r.asset, "direction": r.direction,
        "allowed": r.allowed, "denied": r.denied, "would_deny": r.would_deny,
        "first_seen": r.first_seen, "last_seen": r.last_seen,
        "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
        "actions": r.actions, "workspaces": r.workspaces,
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::Array(a) if !a.is_empty() => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_owned(),
    }
}

/// Streams every segment of `dir` through a [`Lineage`].
pub fn scan(dir: &std::path::Path, subject: Subject) -> Result<Vec<Row>, String> {
    use super::query::{asset_needles, contains, string_member, verbatim};
    // Byte strings a relevant decision must contain; most lines are never parsed. A copy's
    // source is an asset too, so an asset prefix cannot narrow decisions down by bytes.
    let needles: Vec<Vec<u8>> = match &subject {
        Subject::Principal(id) if verbatim(id) => vec![format!("\"{id}\"").into_bytes()],
        Subject::Principal(_) => Vec::new(),
        Subject::Asset(prefix) if prefix.starts_with("s3://") => Vec::new(),
        Subject::Asset(prefix) => asset_needles(prefix),
    };
    let mut lineage = Lineage::new(subject);
    super::query::for_each_line(dir, |line| {
        let wanted = if contains(line, br#""phase":"completion""#) {
            string_member(line, br#""exchange":""#)
                .and_then(|x| std::str::from_utf8(x).ok())
                .is_some_and(|x| lineage.pending.contains_key(x))
        } else {
            contains(line, br#""phase":"decision""#) && needles.iter().all(|n| contains(line, n))
        };
        if wanted {
            if let Ok(record) = serde_json::from_slice::<Value>(line) {
                lineage.add(&record);
            }
        }
    })?;
    Ok(lineage.finish())
}

/// The rows as an aligned table with a header line; counts are right-aligned.
pub fn table(rows: &[Row]) -> String {
    let names = "asset principal direction allowed denied would_deny first_seen last_seen \
                 bytes_in bytes_out actions workspaces";
    let names: Vec<&str> = names.split_whitespace().collect();
    let mut lines: Vec<Vec<_>> = vec![names.iter().map(|n| (n.to_string(), false)).collect()];
    for r in rows.iter().map(to_json) {
        lines.push(names.iter().map(|n| (cell(&r[n]), r[n].is_u64())).collect());
    }
    let mut widths = vec![0; names.len()];
    for line in &lines {
        for (w, (c, _)) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let cells = line
            .iter()
            .zip(&widths)
            .map(|((c, numeric), w)| match numeric {
                true => format!("{c:>w$}"),
                false => format!("{c:<w$}"),
            });
        out.push_str(cells.collect::<Vec<_>>().join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The rows as JSON lines, one object per row, each newline-terminated.
pub fn json_lines(rows: &[Row]) -> String {
    rows.iter().map(|r| to_json(r).to_string() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = (&'static str, &'static str);
    const READ: Op = ("dbfs.read", "download");
    const PUT: Op = ("dbfs.write", "upload");
    const LIST: Op = ("dbfs.list", "metadata");
    const GET: Op = ("GetObject", "download");
    const DELETE: Op = ("DeleteObject", "upload");

    /// A Databricks decision at `hm` (hour:minute) on one day.
    fn dbfs(x: &str, hm: &str, who: &str, op: Op, path: &str, effect: &str) -> Value {
        let decision = match effect {
            "would_deny" => json!({"effect": "allow", "rule": "r", "reason": "", "exception": null,
                                   "would_deny": "r"}),
            _ => json!({"effect": effect, "rule": "r", "reason": "", "exception": null}),
        };
        json!({"seq": 1, "ts": format!("2026-11-27T{hm}:00.000000Z"), "phase": "decision",
               "exchange": x, "request_id": x, "workspace": "prod-analytics",
               "principal": {"id": who, "type": "user", "groups": ["analysts"], "auth": "pat"},
               "action": {"name": op.0, "category": op.1}, "asset": {"kind": "dbfs", "path": path},
               "decision": decision})
    }

    /// An allowed S3 decision on `bucket/key`; an empty part is recorded as null.
    fn s3(x: &str, who: &str, op: Op, object: &str) -> Value {
        let (bucket, key) = object.split_once('/').unwrap_or((object, ""));
        let null_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        json!({"ts": "2026-11-27T09:00:00.000000Z", "phase": "decision", "exchange": x,
               "principal": {"id": who, "type": "service", "groups": []}, "workspace": null,
               "action": {"name": op.0, "category": op.1},
               "asset": {"kind": "s3", "bucket": null_if_empty(bucket),
                         "key": null_if_empty(key), "copy_source": null},
               "decision": {"effect": "allow", "rule": "r", "exception": null}})
    }

    fn done(x: &str, bytes_in: u64, bytes_out: u64) -> Value {
        json!({"ts": "2026-11-27T10:00:00.000000Z", "phase": "completion", "exchange": x,
               "request_id": x, "status": 200, "bytes_in": bytes_in, "bytes_out": bytes_out,
               "duration_us": 5, "upstream_us": 4, "error": null})
    }

    fn run(subject: Subject, records: &[Value]) -> Vec<Row> {
        let mut l = Lineage::new(subject);
        records.iter().for_each(|r| l.add(r));
        l.finish()
    }

    fn summary(r: &Row) -> (&str, &str, &str, [u64; 5]) {
        let n = [r.allowed, r.denied, r.would_deny, r.bytes_in, r.bytes_out];
        (r.asset.as_str(), r.principal.as_str(), r.direction, n)
    }

    #[test]
    fn asset_prefix_groups_counts_times_and_joined_bytes() {
        let mut anon = dbfs("e8", "06:00", "-", READ, "dbfs:/pii/a", "deny");
        anon["principal"] = Value::Null;
        let rows = run(
            Subject::Asset("dbfs:/pii/".into()),
            &[
                json!({"phase": "start", "new_trail": true}),
                dbfs("e1", "08:00", "alice", READ, "dbfs:/pii/a", "allow"),
                dbfs("e2", "07:00", "alice", READ, "dbfs:/pii/a", "would_deny"),
                dbfs("e3", "09:00", "alice", READ, "dbfs:/pii/a", "deny"),
                dbfs("e4", "08:30", "bob", PUT, "dbfs:/pii/a", "allow"),
                dbfs("e5", "08:30", "bob", READ, "dbfs:/tmp/a", "allow"),
                dbfs("e6", "08:40", "bob", LIST, "dbfs:/pii/", "allow"),
                json!({"phase": "decision", "exchange": "e7", "principal": {"id": "bob"},
                       "action": {"name": "clusters.list", "category": "metadata"},
                       "asset": null, "decision": {"effect": "allow"}}),
                done("e1", 10, 1000),
                done("e2", 10, 500),
                done("e3", 10, 99),
                done("e4", 4096, 20),
                done("e5", 1, 1),
                json!({"phase": "stop"}),
                anon.clone(),
            ],
        );
        let got: Vec<_> = rows.iter().map(summary).collect();
        // Alice's deny adds no bytes; the listing never completed, so it has none either.
        assert_eq!(
            got,
            [
                ("dbfs:/pii/", "bob", "other", [1, 0, 0, 0, 0]),
                ("dbfs:/pii/a", "-", "read", [0, 1, 0, 0, 0]),
                ("dbfs:/pii/a", "alice", "read", [2, 1, 1, 20, 1500]),
                ("dbfs:/pii/a", "bob", "write", [1, 0, 0, 4096, 20]),
            ]
        );
        let alice = &rows[2];
        assert_eq!(alice.first_seen, "2026-11-27T07:00:00.000000Z");
        assert_eq!(alice.last_seen, "2026-11-27T09:00:00.000000Z");
        assert_eq!(alice.actions, ["dbfs.read"]);
        assert_eq!(alice.workspaces, ["prod-analytics"]);
        assert!(run(Subject::Principal("-".into()), &[anon]).is_empty());
    }

    #[test]
    fn principal_subject_follows_one_id_across_s3_and_copies() {
        let mut copy = s3("c1", "etl", ("CopyObject", "upload"), "out/k2");
        copy["asset"]["copy_source"] = json!("pii/u/42.json?versionId=v1");
        let rows = run(
            Subject::Principal("etl".into()),
            &[
                s3("s1", "etl", GET, "pii/u/42.json"),
                s3("s2", "etl", ("ListBuckets", "metadata"), ""),
                s3("s3", "other", GET, "pii/u/42.json"),
                s3("s4", "etl", DELETE, "pii/u/42.json"),
                s3("s5", "etl", ("ListObjectsV2", "metadata"), "pii"),
                copy,
                done("s1", 0, 512),
                done("c1", 0, 234),
            ],
        );
        let got: Vec<_> = rows.iter().map(summary).collect();
        assert_eq!(
            got,
            [
                ("s3://out/k2", "etl", "write", [1, 0, 0, 0, 234]),
                ("s3://pii/", "etl", "other", [1, 0, 0, 0, 0]),
                ("s3://pii/u/42.json", "etl", "read", [2, 0, 0, 0, 512]),
                ("s3://pii/u/42.json", "etl", "write", [1, 0, 0, 0, 0]),
            ]
        );
        assert_eq!(rows[2].actions, ["CopyObject", "GetObject"]);
        assert!(rows[2].workspaces.is_empty());
    }

    #[test]
    fn only_forwarded_decisions_await_completion_and_rows_render() {
        let mut l = Lineage::new(Subject::Asset("dbfs:/".into()));
        l.add(&dbfs("a", "01:00", "u", READ, "dbfs:/x", "allow"));
        l.add(&dbfs("b", "02:00", "u", READ, "dbfs:/x", "deny"));
        l.add(&dbfs("c", "03:00", "u", READ, "volume:/elsewhere", "allow"));
        assert_eq!(l.pending.len(), 1);
        l.add(&done("a", 1, 2));
        l.add(&done("a", 1, 2));
        assert!(l.pending.is_empty());
        let rows = l.finish();
        assert_eq!(summary(&rows[0]).3, [1, 1, 0, 1, 2]);

        let t = table(&rows);
        assert_eq!(t.lines().count(), 2);
        assert!(t.starts_with("asset    principal  direction  allowed  denied  would_deny"));
        let last = "02:00:00.000000Z         1          2  dbfs.read  prod-analytics\n";
        assert!(t.ends_with(last), "{t}");
        let j = json_lines(&rows);
        assert!(j.ends_with("}\n") && j.lines().count() == 1);
        let expected = json!({"principal": "u", "asset": "dbfs:/x", "direction": "read",
            "allowed": 1, "denied": 1, "would_deny": 0, "bytes_in": 1, "bytes_out": 2,
            "first_seen": "2026-11-27T01:00:00.000000Z", "last_seen": "2026-11-27T02:00:00.000000Z",
            "actions": ["dbfs.read"], "workspaces": ["prod-analytics"]});
        assert_eq!(serde_json::from_str::<Value>(&j).unwrap(), expected);
    }
}
